# The test vectors are cross-checked by an independent Python implementation
# (proto/testvectors/check.py), which needs the `cryptography` package.
if ! python3 -c "import cryptography.hazmat.primitives.ciphers.aead" 2>/dev/null; then
    echo "scripts/test: installing Python's cryptography package for the vector cross-check"
    python3 -m pip install --quiet cryptography
fi
