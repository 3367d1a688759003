# The embedded demo with QARepVGG-A0: the RepVGG-A0 demo with the quantization-friendly
# block (see ../qarepvgg-a0.py), for `make int8-demo`.
_base_ = ['./repvgg-a0_demo.py']

model = dict(backbone=dict(block_variant='qarepvgg'))
