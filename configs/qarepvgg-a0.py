# QARepVGG-A0 (Chu et al., "Make RepVGG Greater Again: A Quantization-aware Approach",
# AAAI 2024) on ImageNet, 300 epochs: RepVGG-A0 with the quantization-friendly block.
#
# Followed from the authors' code (cxxgtxy/QARepVGG, repvgg.py, QARepVGGBlockV2, "the
# default implementation for QARepVGG"): the 3x3 conv keeps its BN, the 1x1 branch is
# a plain conv without BN or bias, the identity branch has no BN, one BN after the sum;
# the state-dict names are theirs (`rbr_1x1.weight`, `bn`). Where we differ: the authors
# apply that BN after the SE layer (bn(se(sum))), which cannot be fused once an SE sits
# in between; we apply it before SE, so that every block (D2se included) fuses exactly
# into one 3x3 conv + bias. A0 has no SE, so for this config the two agree.
#
# Weight decay: ordinary L2 on every conv weight, the 1x1 included, none on BN
# parameters or biases -- the 'original' rule of the base schedule, unchanged (the
# authors' optional custom L2 on the equivalent kernel, get_custom_L2, is not used,
# as in the paper's recipe).
_base_ = ['./repvgg-a0.py']

model = dict(backbone=dict(block_variant='qarepvgg'))
