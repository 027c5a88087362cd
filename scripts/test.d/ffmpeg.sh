# edge-seed's round-trip tests decrypt the packager's cenc and cbcs output
# with an independent tool, ffmpeg's mov demuxer (-decryption_key), and
# compare decoded frame hashes with the clear sample. Debian's ffmpeg (5.1)
# is enough. The sample itself is committed; ffmpeg only regenerates it via
# edge-seed/scripts/make-sample.sh.
if ! command -v ffmpeg >/dev/null 2>&1; then
    echo "scripts/test: installing ffmpeg for edge-seed's decryption round trip"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ffmpeg >/dev/null
fi
