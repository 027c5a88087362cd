#!/usr/bin/env bash
# Generates the clear sample presentation in edge-seed/testdata/sample/ ONCE
# (the output is committed; tests never regenerate it): a synthetic test
# pattern and a sine tone, 20 s, two H.264 renditions (360p, 720p) and one
# AAC rendition, fragmented MP4 (CMAF) with 2 s segments, as an HLS
# presentation with an init segment per rendition.
set -euo pipefail
cd "$(dirname "$0")/.."
out=testdata/sample
rm -rf "$out"
mkdir -p "$out"
common=(-hide_banner -loglevel error -y
        -f lavfi -i "testsrc2=size=1280x720:rate=25:duration=20"
        -f lavfi -i "sine=frequency=440:sample_rate=48000:duration=20")
video() { # name width height bitrate
    mkdir -p "$out/$1"
    ffmpeg "${common[@]}" -map 0:v -c:v libx264 -preset veryfast -profile:v main \
        -pix_fmt yuv420p -vf "scale=$2:$3" -b:v "$4" -maxrate "$4" -bufsize "$4" \
        -g 50 -keyint_min 50 -sc_threshold 0 -bf 2 \
        -f hls -hls_time 2 -hls_playlist_type vod -hls_segment_type fmp4 \
        -hls_fmp4_init_filename init.mp4 -hls_segment_filename "$out/$1/seg_%05d.m4s" \
        "$out/$1/media.m3u8"
}
video video_360p 640 360 300k
video video_720p 1280 720 700k
mkdir -p "$out/audio"
ffmpeg "${common[@]}" -map 1:a -c:a aac -b:a 64k -ac 2 \
    -f hls -hls_time 2 -hls_playlist_type vod -hls_segment_type fmp4 \
    -hls_fmp4_init_filename init.mp4 -hls_segment_filename "$out/audio/seg_%05d.m4s" \
    "$out/audio/media.m3u8"
cat > "$out/master.m3u8" <<'M3U8'
#EXTM3U
#EXT-X-VERSION:7
#EXT-X-INDEPENDENT-SEGMENTS
#EXT-X-MEDIA:TYPE=AUDIO,GROUP-ID="aac",NAME="tone",DEFAULT=YES,AUTOSELECT=YES,CHANNELS="2",URI="audio/media.m3u8"
#EXT-X-STREAM-INF:BANDWIDTH=420000,RESOLUTION=640x360,CODECS="avc1.4d401e,mp4a.40.2",AUDIO="aac"
video_360p/media.m3u8
#EXT-X-STREAM-INF:BANDWIDTH=850000,RESOLUTION=1280x720,CODECS="avc1.4d401f,mp4a.40.2",AUDIO="aac"
video_720p/media.m3u8
M3U8
du -sh "$out"
