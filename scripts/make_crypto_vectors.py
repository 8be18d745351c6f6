#!/usr/bin/env python3
"""make_crypto_vectors.py -- known-answer vectors from libsodium itself.

Run with the oracle python (scripts/setup_oracle.sh), which loads Debian's
libsodium23 through libnacl; writes
crates/tensorizer-crypto/tests/vectors/libsodium.json:

  secretbox: crypto_secretbox_detached for lengths 0, 1, 15-17, 63-65, 4096,
             2 MiB and 2 MiB + 17; plaintext byte j = (j * 131 + i) % 251 for
             vector i; key and nonce from SHA-256; ciphertext hex when <= 4 KiB,
             else its SHA-256.
  increment: sodium_increment applied to edge-case nonces.
  hsalsa20:  crypto_core_hsalsa20 (NULL constant = "expand 32-byte k").
  pwhash:    crypto_pwhash ALG_ARGON2ID13 at MIN, INTERACTIVE, MODERATE (and
             an explicit opslimit 5 / 1 MiB), salt 00..0f, passphrase "tensorizer".
"""
import ctypes
import hashlib
import json
import os
import sys

import libnacl

sodium = libnacl.nacl


def sha(label):
    return hashlib.sha256(label.encode()).digest()


def secretbox(i, n):
    key = sha(f"key:{i}")
    nonce = sha(f"nonce:{i}")[:24]
    msg = bytes((j * 131 + i) % 251 for j in range(n))
    c = ctypes.create_string_buffer(max(n, 1))
    mac = ctypes.create_string_buffer(16)
    rc = sodium.crypto_secretbox_detached(c, mac, msg, ctypes.c_ulonglong(n), nonce, key)
    assert rc == 0
    ct = c.raw[:n]
    v = {"len": n, "key": key.hex(), "nonce": nonce.hex(), "mac": mac.raw.hex()}
    if n <= 4096:
        v["ciphertext"] = ct.hex()
    else:
        v["ciphertext_sha256"] = hashlib.sha256(ct).hexdigest()
    return v


def increment(n):
    buf = ctypes.create_string_buffer(bytes(n), len(n))
    sodium.sodium_increment(buf, ctypes.c_size_t(len(n)))
    return {"in": bytes(n).hex(), "out": buf.raw[:len(n)].hex()}


def hsalsa(i):
    key = sha(f"hkey:{i}")
    inp = sha(f"hin:{i}")[:16]
    out = ctypes.create_string_buffer(32)
    assert sodium.crypto_core_hsalsa20(out, inp, key, None) == 0
    return {"key": key.hex(), "input": inp.hex(), "out": out.raw.hex()}


def pwhash(ops, mem):
    out = ctypes.create_string_buffer(32)
    pw = b"tensorizer"
    salt = bytes(range(16))
    alg = sodium.crypto_pwhash_alg_argon2id13()
    rc = sodium.crypto_pwhash(out, ctypes.c_ulonglong(32), pw, ctypes.c_ulonglong(len(pw)), salt,
                              ctypes.c_ulonglong(ops), ctypes.c_size_t(mem), ctypes.c_int(alg))
    assert rc == 0
    return {"passphrase": pw.decode(), "salt": salt.hex(), "opslimit": ops, "memlimit": mem, "alg": alg,
            "key": out.raw.hex()}


def main():
    lengths = [0, 1, 15, 16, 17, 63, 64, 65, 4096, 2 * 1024 * 1024, 2 * 1024 * 1024 + 17]
    sodium.sodium_version_string.restype = ctypes.c_char_p
    doc = {
        "made_by": "scripts/make_crypto_vectors.py with libsodium " + sodium.sodium_version_string().decode(),
        "secretbox": [secretbox(i, n) for i, n in enumerate(lengths)],
        "increment": [increment(n) for n in (
            b"\xff\xff\xff" + bytes(21), bytes([0xff] * 24), bytes(24), bytes([0xfe]) + bytes(23),
            bytes([0xff] * 8) + b"\x01" + bytes(15))],
        "hsalsa20": [hsalsa(i) for i in range(4)],
        "pwhash": [pwhash(1, 8192), pwhash(2, 64 << 20), pwhash(3, 256 << 20), pwhash(5, 1 << 20)],
    }
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                       "crates/tensorizer-crypto/tests/vectors/libsodium.json")
    with open(out, "w") as f:
        json.dump(doc, f, indent=1)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
