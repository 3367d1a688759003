# RepVGG-A2, the paper's 120-epoch recipe (docs/repvgg.md 3b).
_base_ = ['./_base_/recipes/paper_120e.py']

model = dict(backbone=dict(arch='A2'), head=dict(in_channels=1408))
