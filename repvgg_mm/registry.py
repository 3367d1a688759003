"""Registries of repvgg_mm: one child of each MMPretrain registry, scope ``repvgg_mm``.

A config with ``default_scope = 'repvgg_mm'`` looks a type up here first and then in
MMPretrain's and MMEngine's registries, so our ``RepVGG`` shadows MMPretrain's class
of the same name while ``ImageClassifier``, ``LinearClsHead``, ``Accuracy`` and the
rest come from MMPretrain unchanged.
"""
from mmengine.registry import Registry
from mmpretrain import registry as mmpretrain_registry

SCOPE = 'repvgg_mm'


# Importing the package registers every module, so it is the one location to import.
LOCATIONS = ['repvgg_mm']


def _child(parent: Registry, locations: list) -> Registry:
    return Registry(parent.name, parent=parent, scope=SCOPE, locations=locations)


RUNNERS = _child(mmpretrain_registry.RUNNERS, LOCATIONS)
RUNNER_CONSTRUCTORS = _child(mmpretrain_registry.RUNNER_CONSTRUCTORS, LOCATIONS)
LOOPS = _child(mmpretrain_registry.LOOPS, LOCATIONS)
HOOKS = _child(mmpretrain_registry.HOOKS, LOCATIONS)
LOG_PROCESSORS = _child(mmpretrain_registry.LOG_PROCESSORS, LOCATIONS)
OPTIMIZERS = _child(mmpretrain_registry.OPTIMIZERS, LOCATIONS)
OPTIM_WRAPPERS = _child(mmpretrain_registry.OPTIM_WRAPPERS, LOCATIONS)
OPTIM_WRAPPER_CONSTRUCTORS = _child(mmpretrain_registry.OPTIM_WRAPPER_CONSTRUCTORS, LOCATIONS)
PARAM_SCHEDULERS = _child(mmpretrain_registry.PARAM_SCHEDULERS, LOCATIONS)
DATASETS = _child(mmpretrain_registry.DATASETS, LOCATIONS)
DATA_SAMPLERS = _child(mmpretrain_registry.DATA_SAMPLERS, LOCATIONS)
TRANSFORMS = _child(mmpretrain_registry.TRANSFORMS, LOCATIONS)
MODELS = _child(mmpretrain_registry.MODELS, LOCATIONS)
MODEL_WRAPPERS = _child(mmpretrain_registry.MODEL_WRAPPERS, LOCATIONS)
WEIGHT_INITIALIZERS = _child(mmpretrain_registry.WEIGHT_INITIALIZERS, LOCATIONS)
TASK_UTILS = _child(mmpretrain_registry.TASK_UTILS, LOCATIONS)
METRICS = _child(mmpretrain_registry.METRICS, LOCATIONS)
EVALUATORS = _child(mmpretrain_registry.EVALUATORS, LOCATIONS)
VISUALIZERS = _child(mmpretrain_registry.VISUALIZERS, LOCATIONS)
VISBACKENDS = _child(mmpretrain_registry.VISBACKENDS, LOCATIONS)
# BATCH_AUGMENTS and TOKENIZER have no parent in MMEngine; ours are children of
# MMPretrain's so that Mixup/CutMix resolve under our scope too.
BATCH_AUGMENTS = _child(mmpretrain_registry.BATCH_AUGMENTS, LOCATIONS)
# Training loaders that replace MMEngine's DataLoader when a config names one by
# ``type`` (e.g. ``GPUDecodeLoader``); RepVGGRunner.build_dataloader builds them.
DATA_LOADERS = Registry('data loader', scope=SCOPE, locations=LOCATIONS)
