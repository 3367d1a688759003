# RepVGG-B3, the paper's 200-epoch recipe (docs/repvgg.md 3b): AutoAugment, label
# smoothing 0.1 and mixup. No official training script was released for it; see
# _base_/recipes/paper_200e.py for the settings that are ours.
_base_ = ['./_base_/recipes/paper_200e.py']

model = dict(backbone=dict(arch='B3'), head=dict(in_channels=2560))
