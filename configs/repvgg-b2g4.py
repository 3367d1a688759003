# RepVGG-B2g4 on ImageNet, 300 epochs.
_base_ = [
    '_base_/models/repvgg.py',
    '_base_/datasets/imagenet_bs32.py',
    '_base_/schedules/imagenet_bs256_300e_coslr.py',
    '_base_/default_runtime.py',
]

model = dict(backbone=dict(arch='B2g4'), head=dict(in_channels=2560))
