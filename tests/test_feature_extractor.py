"""docs/backbone.md's multi-scale feature example runs, and fused features are equal."""
import os.path as osp
import re

import pytest
import torch
from conftest import ROOT, randomize_bn

from repvgg_mm import reparameterize_model

pytestmark = pytest.mark.usefixtures('one_thread')
DOC = osp.join(ROOT, 'docs', 'backbone.md')


def _first_example() -> str:
    with open(DOC) as f:
        return re.findall(r'```python\n(.*?)```', f.read(), re.S)[0]


def test_documented_feature_extractor_example(capsys):
    namespace = {}
    exec(compile(_first_example(), DOC, 'exec'), namespace)
    shapes = [tuple(f.shape) for f in namespace['features']]
    assert shapes == [(2, 48, 56, 56), (2, 96, 28, 28), (2, 192, 14, 14), (2, 1280, 7, 7)]
    assert [s[1] for s in shapes] == namespace['backbone'].out_channels
    assert len(capsys.readouterr().out.splitlines()) == 4

    # the same fusion with BN statistics that are not the identity
    backbone = randomize_bn(namespace['backbone']).eval()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = backbone(images)
        fused = reparameterize_model(backbone)
        fused_features = fused(images)
    assert not any('rbr_dense' in name for name, _ in fused.named_parameters())
    for feature, fused_feature in zip(features, fused_features):
        torch.testing.assert_close(fused_feature, feature, rtol=1e-4, atol=1e-4)


def test_classifier_extract_feat_gives_the_backbone_stages():
    from repvgg_mm.apis import get_model
    from repvgg_mm.cli import load_config
    cfg = load_config(osp.join(ROOT, 'configs', 'repvgg-a0.py'))
    cfg.model.backbone.out_indices = (0, 1, 2, 3)
    model = get_model(cfg)
    with torch.no_grad():
        features = model.extract_feat(torch.randn(1, 3, 64, 64), stage='backbone')
    assert [tuple(f.shape[1:]) for f in features] == [(48, 16, 16), (96, 8, 8),
                                                      (192, 4, 4), (1280, 2, 2)]
