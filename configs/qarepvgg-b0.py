# QARepVGG-B0 on ImageNet, 300 epochs: RepVGG-B0 with the quantization-friendly block.
# What was followed from the authors' QARepVGGBlockV2, and the weight decay, are
# described in qarepvgg-a0.py.
_base_ = ['./repvgg-b0.py']

model = dict(backbone=dict(block_variant='qarepvgg'))
