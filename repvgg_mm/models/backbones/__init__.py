from .repvgg import RepVGG

__all__ = ['RepVGG']
