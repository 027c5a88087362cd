#!/usr/bin/env python3
"""An independent implementation of the Loaves trust primitives, in Python,
checked against the committed test vectors.

It shares no code with the Rust crate: protobuf is parsed by hand below,
Ed25519, X25519, HMAC-SHA256 and AES-256-GCM come from the `cryptography`
package and hashlib, and HPKE (RFC 9180, base mode) is written out from the
RFC. A JavaScript or Kotlin SDK can follow the same steps.
"""

import hashlib
import hmac
import json
import pathlib
import struct
import sys

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives import serialization

HERE = pathlib.Path(__file__).resolve().parent


def load(name):
    return json.loads((HERE / name).read_text())


def protobuf_fields(data):
    """Decodes protobuf wire format into {field number: [values]}."""
    fields, i = {}, 0

    def varint():
        nonlocal i
        shift = value = 0
        while True:
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7

    while i < len(data):
        key = varint()
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:
            value = varint()
        elif wire_type == 2:
            length = varint()
            value = data[i:i + length]
            i += length
        else:
            raise ValueError(f"unexpected wire type {wire_type}")
        fields.setdefault(number, []).append(value)
    return fields


def verify_envelope(envelope_bytes, public_key_bytes, context):
    """Signed{1: body, 2: signer_key_id, 3: signature}; returns the body."""
    envelope = protobuf_fields(envelope_bytes)
    body, key_id, signature = envelope[1][0], envelope[2][0], envelope[3][0]
    assert key_id == hashlib.sha256(public_key_bytes).digest()[:8], "key id"
    Ed25519PublicKey.from_public_bytes(public_key_bytes).verify(signature, context + body)
    return body


def check_session_token():
    v = load("session_token.json")
    public = bytes.fromhex(v["signer_public_key"])
    seed = bytes.fromhex(v["signer_seed"])
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    derived = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert derived == public, "public key from seed"
    context = bytes.fromhex(v["context"])
    assert context == b"loaves/v1/session-token\0"
    body = verify_envelope(bytes.fromhex(v["token"]), public, context)
    assert body.hex() == v["body"]
    # Ed25519 is deterministic: signing again gives the committed signature.
    again = Ed25519PrivateKey.from_private_bytes(seed).sign(context + body)
    assert again.hex() == v["signature"], "signature"
    f = protobuf_fields(body)
    claims = v["claims"]
    assert f[1][0].hex() == claims["session_id"]
    assert f[2][0].decode() == claims["account"]
    assert f[3][0].decode() == claims["title"]
    assert [r.decode() for r in f[4]] == claims["renditions"]
    assert f[5][0].hex() == claims["peer_public_key"]
    assert f[6][0].decode() == claims["region"] and f[7][0].decode() == claims["isp"]
    assert f[8][0] == claims["not_before"] and f[9][0] == claims["expires_at"]
    assert claims["not_before"] <= v["verify_at"] <= claims["expires_at"]


def check_manifest():
    v = load("manifest.json")
    public = bytes.fromhex(v["signer_public_key"])
    context = bytes.fromhex(v["context"])
    assert context == b"loaves/v1/manifest-chunk\0"
    init_hash = hashlib.sha256(bytes.fromhex(v["init_segment"])).digest()
    segments = {s["sequence"]: bytes.fromhex(s["bytes"]) for s in v["segments"]}
    previous, next_sequence, listed = None, None, {}
    for index, chunk in enumerate(v["chunks"]):
        body = verify_envelope(bytes.fromhex(chunk), public, context)
        assert hashlib.sha256(body).hexdigest() == v["chunk_body_sha256"][index]
        f = protobuf_fields(body)
        assert f.get(3, [0])[0] == index, "chunk_index"
        assert f.get(4, [b""])[0] == (previous or b""), "chain"
        assert f[5][0] == init_hash, "init hash"
        for entry_bytes in f.get(7, []):
            entry = protobuf_fields(entry_bytes)
            sequence = entry.get(1, [0])[0]
            assert next_sequence in (None, sequence), "contiguous"
            next_sequence = sequence + 1
            listed[sequence] = (entry[3][0], entry[5][0])
        previous = hashlib.sha256(body).digest()
    for sequence, data in segments.items():
        size, digest = listed[sequence]
        assert size == len(data) and digest == hashlib.sha256(data).digest(), sequence


# --- HPKE, RFC 9180, base mode: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM
KEM_SUITE = b"KEM" + struct.pack(">H", 0x0020)
HPKE_SUITE = b"HPKE" + struct.pack(">HHH", 0x0020, 0x0001, 0x0002)


def extract(salt, ikm):
    return hmac.new(salt or b"\0" * 32, ikm, hashlib.sha256).digest()


def expand(prk, info, length):
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out, counter = out + block, counter + 1
    return out[:length]


def labeled_extract(suite, salt, label, ikm):
    return extract(salt, b"HPKE-v1" + suite + label + ikm)


def labeled_expand(suite, prk, label, info, length):
    return expand(prk, struct.pack(">H", length) + b"HPKE-v1" + suite + label + info, length)


def derive_key_pair(ikm):
    prk = labeled_extract(KEM_SUITE, b"", b"dkp_prk", ikm)
    sk = labeled_expand(KEM_SUITE, prk, b"sk", b"", 32)
    return X25519PrivateKey.from_private_bytes(sk)


def raw(public_key):
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_schedule(shared_secret, info):
    psk_id_hash = labeled_extract(HPKE_SUITE, b"", b"psk_id_hash", b"")
    info_hash = labeled_extract(HPKE_SUITE, b"", b"info_hash", info)
    context = b"\x00" + psk_id_hash + info_hash
    secret = labeled_extract(HPKE_SUITE, shared_secret, b"secret", b"")
    key = labeled_expand(HPKE_SUITE, secret, b"key", context, 32)
    base_nonce = labeled_expand(HPKE_SUITE, secret, b"base_nonce", context, 12)
    return key, base_nonce


def kem_shared_secret(dh, enc, pk_recipient):
    kem_context = enc + pk_recipient
    eae_prk = labeled_extract(KEM_SUITE, b"", b"eae_prk", dh)
    return labeled_expand(KEM_SUITE, eae_prk, b"shared_secret", kem_context, 32)


def check_key_wrap():
    v = load("key_wrap.json")
    recipient = derive_key_pair(bytes.fromhex(v["recipient_ikm"]))
    pk_r = raw(recipient.public_key())
    assert pk_r.hex() == v["recipient_public_key"], "recipient public key"
    info = b"loaves/v1/content-key-wrap\0" + bytes.fromhex(v["session_id"])
    assert info.hex() == v["info"]
    aad = bytes.fromhex(v["key_id"])
    assert aad.hex() == v["aad"]
    enc = bytes.fromhex(v["encapsulated_key"])
    ciphertext = bytes.fromhex(v["ciphertext"])

    # Open, as the client does.
    dh = recipient.exchange(X25519PublicKey.from_public_bytes(enc))
    key, nonce = key_schedule(kem_shared_secret(dh, enc, pk_r), info)
    plaintext = AESGCM(key).decrypt(nonce, ciphertext, aad)
    assert plaintext.hex() == v["content_key"], "content key"

    # Seal, as the license server does, from the published ephemeral ikm.
    ephemeral = derive_key_pair(bytes.fromhex(v["ephemeral_ikm"]))
    assert raw(ephemeral.public_key()) == enc, "encapsulated key"
    dh = ephemeral.exchange(X25519PublicKey.from_public_bytes(pk_r))
    key, nonce = key_schedule(kem_shared_secret(dh, enc, pk_r), info)
    assert AESGCM(key).encrypt(nonce, plaintext, aad) == ciphertext, "ciphertext"


def main():
    checks = [check_session_token, check_manifest, check_key_wrap]
    for check in checks:
        check()
        print(f"ok  {check.__name__}")
    print(f"{len(checks)} passed, 0 failed")


if __name__ == "__main__":
    sys.exit(main())
