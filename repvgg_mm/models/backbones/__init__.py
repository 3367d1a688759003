from .repvgg import RepVGG, stage_widths
from .repvggplus import RepVGGplus, RepVGGplusStage

__all__ = ['RepVGG', 'RepVGGplus', 'RepVGGplusStage', 'stage_widths']
