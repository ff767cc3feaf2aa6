"""Build hook for the optional native chunk scanner.

Metadata lives in pyproject.toml. The extension is optional: without a C
compiler zconv falls back to the numpy scanner (same chunks, slower).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "converter.chunked._rollsum",
            ["converter/chunked/_rollsum.c"],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
