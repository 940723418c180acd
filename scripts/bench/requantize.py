#!/usr/bin/env python3
"""Re-quantizes a GGUF with llama.cpp's own quantizer (llama-cpp-python's llama_model_quantize),
so that afinar and llama.cpp can be timed on the same Q8_0 / Q4_0 files.

    python scripts/bench/requantize.py IN.gguf OUT.gguf q8_0|q4_0|q4_1

The source may itself be quantized (allow_requantize): the result is for speed measurements, not
for quality. Every tensor, the token embedding and the output included, gets the chosen type
(`pure`), so that both engines read the same blocks everywhere.
"""
import ctypes
import sys

import llama_cpp

TYPES = {
    "q8_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0,
    "q4_0": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0,
    "q4_1": llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_1,
}


def main():
    if len(sys.argv) != 4 or sys.argv[3] not in TYPES:
        sys.exit(__doc__)
    src, dst, kind = sys.argv[1:]
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = TYPES[kind]
    params.allow_requantize = True
    params.pure = True
    params.nthread = 2
    rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params))
    if rc != 0:
        sys.exit(f"llama_model_quantize failed with {rc}")


if __name__ == "__main__":
    main()
