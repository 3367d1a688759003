"""INT8 quantization-aware training (QAT) of a fused RepVGG, through the Runner, to a
QDQ ONNX model.

The steps, each a function here:

1. :func:`start_qat` -- the fused float model of a checkpoint gets a BatchNorm after
   every fused conv (statistics recorded on training images, outputs unchanged:
   checked), its weights go into the fake-quantized :class:`QATClassifier`, and the
   INT8 ranges are calibrated on training images as ``tools/quantize.py`` does
   (seeded draw from the train split through the test pipeline, min-max).
2. The Runner trains it like any model (resume, checkpoints, logs, distributed).
3. :func:`~.qat_export.export_qat_onnx` -- BNs folded, fake quantizers turned into
   QuantizeLinear/DequantizeLinear (weights as INT8 constants, biases on the INT32 grid
   the runtimes compute with), one file for ONNX Runtime and one for TensorRT, each
   placement checked (:mod:`.qdq`), and the ONNX Runtime file's predictions checked
   against the trained model on val images before anything is kept.

:func:`quantization_aware_training` runs all three and evaluates the written file in
ONNX Runtime.
"""
import copy
from typing import Dict, Iterator, Optional

import torch
from mmengine.config import Config

from repvgg_mm.fileio import atomic_path, check_output_paths
from repvgg_mm.models.qat import (
    LogitsNetwork,
    QATClassifier,
    fake_quantizer_names,
    fake_quantizers,
    insert_bn,
    record_conv_statistics,
    require_torchao,
    set_bn_statistics,
)
from repvgg_mm.models.quantizer import set_qparams_from_observer

from ..export import (
    atomic_output,
    evaluate_onnx,
    image_batches,
    relative_difference,
    require_deploy_packages,
)
from ..reparam import load_fused_model
from .qat_export import MIN_AGREEMENT, export_qat_onnx, tensorrt_path

QAT_DEFAULTS = dict(bn_images=256, calib_images=256, seed=0, check_images=1000,
                    min_agreement=MIN_AGREEMENT)


def qat_settings(cfg: Config) -> dict:
    """The config's ``qat`` dict over :data:`QAT_DEFAULTS` (images for the BN
    statistics, calibration images, seed of both draws, val images the exported file
    is checked on and the agreement it needs with the trained model)."""
    settings = dict(QAT_DEFAULTS)
    unknown = set(cfg.get('qat') or {}) - set(QAT_DEFAULTS)
    if unknown:
        raise KeyError(f'config {cfg.filename!r}: unknown qat keys {sorted(unknown)}; '
                       f'expected {sorted(QAT_DEFAULTS)}')
    settings.update(cfg.get('qat') or {})
    for key in ('bn_images', 'calib_images', 'check_images'):
        if not isinstance(settings[key], int) or settings[key] < 1:
            raise ValueError(f'config {cfg.filename!r}: qat.{key} must be an integer >= 1, '
                             f'got {settings[key]!r}')
    if not 0 <= settings['min_agreement'] <= 1:
        raise ValueError(f'config {cfg.filename!r}: qat.min_agreement must be in [0, 1], got '
                         f'{settings["min_agreement"]!r}')
    return settings


def check_qat_options(cfg: Config) -> None:
    """Refuse, in one line, the options that do not fit quantization-aware training:
    ``compile`` (the step fails after graph breaks in the fake-quantized graph) and
    mixed precision (fake quantization in bf16/fp16 rounds to another grid than the
    INT8 file computes: eval logits 0.23 off the fp32 fake-quant model's, measured)."""
    if cfg.get('compile'):
        raise ValueError(f'config {cfg.filename!r}: compile does not fit quantization-aware '
                         'training; remove configs/_base_/options/compile.py from its _base_')
    wrapper = cfg.get('optim_wrapper') or {}
    if wrapper.get('type') == 'AmpOptimWrapper' or wrapper.get('dtype') in (
            'float16', 'bfloat16', torch.float16, torch.bfloat16):
        raise ValueError(f'config {cfg.filename!r}: mixed precision (AmpOptimWrapper, '
                         '--amp) does not fit quantization-aware training; train in fp32')


def float_config(cfg: Config) -> Config:
    """The float model's config inside a QAT config (``model.float_model``)."""
    model = cfg.get('model') or {}
    if model.get('type') != 'QATClassifier' or 'float_model' not in model:
        raise ValueError(f'config {cfg.filename!r} is not a QAT config: expected '
                         "model.type='QATClassifier' with model.float_model (e.g. "
                         f"configs/qat/repvgg-a0_qat.py), got model.type={model.get('type')!r}")
    float_cfg = copy.deepcopy(cfg)
    float_cfg.model = float_cfg.model.float_model
    return float_cfg


def _tensors(cfg: Config, images: int, seed: int, device) -> Iterator[torch.Tensor]:
    for batch, _ in image_batches(cfg, 'train', normalized=True, limit=images,
                                  shuffle=True, seed=seed):
        yield torch.from_numpy(batch).to(device)


@torch.no_grad()
def calibrate(network: torch.nn.Module, batches) -> int:
    """Set every fake quantizer's range to the min and max it sees over ``batches``
    (the model in eval mode, fake quantization off), as min-max calibration does;
    the moving average of training takes over from there.

    Returns:
        int: the number of images seen.
    """
    from torchao.quantization.pt2e import move_exported_model_to_eval
    quantizers = fake_quantizers(network)
    if not quantizers:
        raise ValueError('the model has no fake quantizer to calibrate')
    move_exported_model_to_eval(network)
    averaging = {}
    for name, fq in quantizers:
        fq.disable_fake_quant()
        fq.enable_observer()
        averaging[name] = fq.activation_post_process.averaging_constant
        fq.activation_post_process.averaging_constant = 1.0  # each batch's own range
    low: Dict[str, torch.Tensor] = {}
    high: Dict[str, torch.Tensor] = {}
    images = 0
    for batch in batches:
        network(batch)
        images += len(batch)
        for name, fq in quantizers:
            obs = fq.activation_post_process
            low[name] = obs.min_val.clone() if name not in low else torch.minimum(
                low[name], obs.min_val)
            high[name] = obs.max_val.clone() if name not in high else torch.maximum(
                high[name], obs.max_val)
    if images == 0:
        raise ValueError('no calibration images')
    for name, fq in quantizers:
        obs = fq.activation_post_process
        obs.averaging_constant = averaging[name]
        obs.min_val.resize_(low[name].shape).copy_(low[name])
        obs.max_val.resize_(high[name].shape).copy_(high[name])
        set_qparams_from_observer(fq)
        fq.enable_fake_quant()
    return images


def bn_inserted_network(fused: torch.nn.Module, batches) -> tuple:
    """The fused classifier as ``images -> logits`` with a BN after every fused conv,
    statistics recorded on ``batches`` (a list of tensors), checked to give the fused
    model's outputs on the first batch.

    Returns:
        tuple: the network (eval mode) and the max relative logit difference.
    """
    reference = LogitsNetwork(fused).eval()
    network = copy.deepcopy(reference)
    insert_bn(network)
    set_bn_statistics(network, record_conv_statistics(network, batches))
    network.eval()
    with torch.no_grad():
        expected = reference(batches[0]).cpu().numpy()
        got = network(batches[0]).cpu().numpy()
    rel_diff = relative_difference(expected, got)[1]
    if not rel_diff <= 1e-4:
        raise RuntimeError(f'the model with BatchNorms inserted differs from the fused model '
                           f'by {rel_diff:.3g} (relative, tolerance 1e-4)')
    return network, rel_diff


def start_qat(model: QATClassifier, cfg: Config, checkpoint: str,
              loaded: Optional[dict] = None) -> dict:
    """Initialise ``model`` (built from the QAT config ``cfg``) from a float
    ``checkpoint``: fuse it, insert and fill the BNs, load the weights, calibrate.

    Args:
        loaded (dict, optional): :func:`load_fused_model`'s result for ``checkpoint``,
            when the caller has it already.

    Returns:
        dict: ``bn_images``, ``calib_images``, ``bn_max_rel_diff`` (BN-inserted vs
        fused model), ``fake_quantizers``.
    """
    settings = qat_settings(cfg)
    loaded = loaded or load_fused_model(float_config(cfg), checkpoint)
    device = next(model.network.parameters()).device
    fused = copy.deepcopy(loaded['fused']).to(device)
    bn_batches = list(_tensors(cfg, settings['bn_images'], settings['seed'], device))
    if not bn_batches:
        raise ValueError(f'no training images for the BN statistics: the train split of '
                         f'config {cfg.filename!r} is empty')
    network, rel_diff = bn_inserted_network(fused, bn_batches)
    bn_images = sum(len(b) for b in bn_batches)
    del bn_batches
    # Not an outside checkpoint: the BN-inserted model just built from the float one
    # (read safely and strictly by load_fused_model). Deliberately non-strict only for
    # the fake quantizers' state, which that model has not; any other missing or
    # unexpected key is refused below.
    result = model.network.load_state_dict(network.state_dict(), strict=False)
    fq_names = set(fake_quantizer_names(model.network))
    stray = [k for k in result.missing_keys if k.split('.')[0] not in fq_names]
    if stray or result.unexpected_keys:
        raise RuntimeError(f'the BN-inserted model of {checkpoint!r} does not fit the QAT '
                           f'model: missing {stray[:5]}, unexpected '
                           f'{result.unexpected_keys[:5]}')
    images = calibrate(model.network, _tensors(cfg, settings['calib_images'],
                                               settings['seed'], device))
    model.started.fill_(1)
    model.forget_int8()
    model.train(model.training)
    return dict(bn_images=bn_images, calib_images=images,
                bn_max_rel_diff=rel_diff,
                fake_quantizers=len(fake_quantizers(model.network)))


def quantization_aware_training(cfg: Config, checkpoint: str, output: str,
                                resume: bool = False, evaluate: bool = True) -> dict:
    """From a float ``checkpoint`` (training-time or fused, any format the project
    reads) to the INT8 QDQ ONNX model ``output``: QAT through the Runner with the QAT
    config ``cfg`` (``cfg.work_dir`` holds its checkpoints and logs), then export and,
    when ``evaluate``, ONNX Runtime's top-1 of the written file on the val split.

    Everything that can be checked before training is, and nothing is written when it
    fails: ``output`` against the inputs, the checkpoint against the config's arch
    (strict load; NaN/inf weights refused). With ``resume``, training continues from
    the newest complete checkpoint of the work dir (when there is none it starts
    anew).

    Returns:
        dict: ``output``, ``tensorrt_output`` (``<output stem>_tensorrt.onnx``),
        ``work_dir``, ``resumed_from``, ``start`` (see :func:`start_qat`; None when
        resumed), ``export`` (see :func:`~.qat_export.export_qat_onnx`) and, when
        evaluated, ``val_images``, ``int8_top1``, ``int8_img_s``.
    """
    from mmengine.dist import barrier, is_main_process
    from mmengine.model import is_model_wrapper
    from mmengine.registry import RUNNERS, init_default_scope

    from repvgg_mm.checkpoints import allow_training_checkpoints
    from repvgg_mm.engine import find_resumable_checkpoint

    require_deploy_packages()
    require_torchao()
    settings = qat_settings(cfg)
    check_qat_options(cfg)
    trt_output = tensorrt_path(output)
    check_output_paths({'OUTPUT': output, 'TensorRT file': trt_output},
                       {'CONFIG': cfg.filename, 'CHECKPOINT': checkpoint})
    loaded = load_fused_model(float_config(cfg), checkpoint)  # another arch, NaN: refused
    resumed_from = find_resumable_checkpoint(cfg.work_dir) if resume else None
    cfg = copy.deepcopy(cfg)
    cfg.resume, cfg.load_from = resumed_from is not None, resumed_from

    init_default_scope(cfg.get('default_scope', 'repvgg_mm'))
    runner = RUNNERS.build(cfg) if 'runner_type' in cfg else None
    if runner is None:
        from mmengine.runner import Runner
        runner = Runner.from_cfg(cfg)
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    start = None
    if resumed_from is None:
        start = start_qat(model, cfg, checkpoint, loaded)
        runner.logger.info(
            f'QAT start from {checkpoint}: BN statistics on {start["bn_images"]} images '
            f'(max rel. logit change {start["bn_max_rel_diff"]:.2g}), '
            f'{start["fake_quantizers"]} fake quantizers calibrated on '
            f'{start["calib_images"]} images')
    with allow_training_checkpoints():
        runner.train()
    report = dict(output=output, work_dir=cfg.work_dir, resumed_from=resumed_from,
                  start=start)
    if is_main_process():
        inputs = {'CONFIG': cfg.filename, 'CHECKPOINT': checkpoint}
        with atomic_output(output, inputs) as tmp, atomic_path(trt_output) as trt_tmp:
            report['export'] = export_qat_onnx(
                model, tmp, cfg, tensorrt=trt_tmp, check_images=settings['check_images'],
                min_agreement=settings['min_agreement'])
        report['tensorrt_output'] = trt_output
        if evaluate:
            result = evaluate_onnx(output, cfg, 'val')
            report.update(val_images=result['images'], int8_top1=result['top1'],
                          int8_img_s=result['images'] / result['seconds'])
    barrier()
    return report
