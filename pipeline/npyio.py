"""Streaming .npy files: write a header, append chunks, never hold the array in memory.

Peak memory stays at one chunk whatever the corpus size (1 GB of Linux C included);
plain sequential writes keep resident memory flat, where a writable memory map would
count every touched page of the output file.
"""
from __future__ import annotations

import numpy as np
from numpy.lib import format as npformat


def smallest_uint(n_values: int) -> np.dtype:
    """The smallest unsigned integer type that holds ids 0..n_values-1 (uint8 up to 256)."""
    for dt in (np.uint8, np.uint16, np.uint32):
        if n_values <= np.iinfo(dt).max + 1:
            return np.dtype(dt)
    return np.dtype(np.uint64)


class NpyWriter:
    """Write a 1-D or 2-D .npy whose length is known up front, chunk by chunk."""

    def __init__(self, path, dtype, shape: tuple[int, ...]):
        self.f = open(path, "wb")
        self.dtype = np.dtype(dtype)
        self.shape = shape
        self.written = 0
        npformat.write_array_header_1_0(
            self.f, {"descr": npformat.dtype_to_descr(self.dtype), "fortran_order": False, "shape": shape}
        )

    def write(self, arr: np.ndarray) -> None:
        arr = np.ascontiguousarray(arr, dtype=self.dtype)
        self.f.write(memoryview(arr).cast("B"))
        self.written += arr.shape[0]

    def close(self) -> None:
        self.f.close()
        if self.written != self.shape[0]:
            raise RuntimeError(f"npy writer: wrote {self.written} rows, header says {self.shape[0]}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is None:
            self.close()
        else:
            self.f.close()


def iter_npy(path, chunk_rows: int = 16 << 20):
    """Yield (offset, chunk) of a .npy file read sequentially, without a memory map."""
    with open(path, "rb") as f:
        shape, dtype = read_header(f)
        n = shape[0] if shape else 0
        pos = 0
        while pos < n:
            k = min(chunk_rows, n - pos)
            buf = np.empty((k,) + tuple(shape[1:]), dtype=dtype)
            f.readinto(memoryview(buf).cast("B"))
            yield pos, buf
            pos += k
    return


def npy_header(path) -> tuple[tuple[int, ...], np.dtype]:
    with open(path, "rb") as f:
        return read_header(f)


def read_header(f) -> tuple[tuple[int, ...], np.dtype]:
    version = npformat.read_magic(f)
    read = npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
    shape, fortran, dtype = read(f)
    if fortran:
        raise ValueError(f"{f.name}: Fortran-ordered arrays are not supported")
    return shape, dtype
