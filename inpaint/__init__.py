"""The inpainting core: plain Python with no Triton or Google imports."""
