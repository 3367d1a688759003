# RepVGG-A0, the paper's 120-epoch recipe (docs/repvgg.md 3b).
_base_ = ['./_base_/recipes/paper_120e.py']
