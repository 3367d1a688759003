# RepVGG-B1g4, the paper's 120-epoch recipe (docs/repvgg.md 3b).
_base_ = ['./_base_/recipes/paper_120e.py']

model = dict(backbone=dict(arch='B1g4'), head=dict(in_channels=2048))
