import zlib

import numpy as np

from protocols._crc import crc32


def test_crc32_equals_zlib(rng):
    # isal's folding CRC must give zlib's values: the wire spec names zlib's CRC-32
    for n in (0, 1, 7, 64, 4097, 96 * 96 * 68 * 2 + 3):
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        assert crc32(data) == zlib.crc32(data) & 0xFFFFFFFF
    vol = rng.integers(-3000, 3000, (96, 96, 68), dtype=np.int16)
    assert crc32(memoryview(vol).cast("B")) == zlib.crc32(vol.tobytes())
    assert crc32(b"def", crc32(b"abc")) == zlib.crc32(b"abcdef")
