from .repvgg import RepVGG
from .repvggplus import RepVGGplus, RepVGGplusStage

__all__ = ['RepVGG', 'RepVGGplus', 'RepVGGplusStage']
