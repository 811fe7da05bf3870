"""The SIMD C backend: tile IR → one C translation unit → a shared library loaded in-process."""
