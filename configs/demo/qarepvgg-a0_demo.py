# The embedded demo with QARepVGG-A0: the RepVGG-A0 demo with the quantization-friendly
# block (see ../qarepvgg-a0.py), for `make int8-demo`.
_base_ = ['./repvgg-a0_demo.py']

# identity_init (the RepVGG demo's) initialises an identity BN, which QARepVGG has not.
model = dict(backbone=dict(block_variant='qarepvgg', identity_init=False))

# A quarter of RepVGG's learning rate: 0.1 per 1024 images instead of per 256. With
# RepVGG's rate QARepVGG-A0 learns this small task very slowly (21-23 % val top-1 after 15
# epochs, where RepVGG-A0 reached 64-90 %); with a quarter of it, or with AdamW, it learns
# as fast as RepVGG-A0 (35.2 % and 39.4 % after an 8-epoch schedule; at RepVGG's rate,
# 15.6 % at epoch 8 of a 15-epoch one; RepVGG-A0 at its own rate: 35.2 % after 8).
# Measured on the demo data on a 2-core CPU; the ImageNet configs keep the paper's recipe.
auto_scale_lr = dict(base_batch_size=1024)
