"""INT8 post-training quantization of an exported model with ONNX Runtime's static
quantization, and the measured accuracy drop.

The INT8 model is written in QDQ format (QuantizeLinear/DequantizeLinear pairs around
the float ops), which ONNX Runtime, TensorRT and other runtimes consume. Weights and
activations are signed INT8 with symmetric ranges (zero point 0), what TensorRT expects.
Calibration images are drawn (seeded) from the config's *training* set and fed
through its *test* pipeline, so that they are distributed as the inputs at test time.
"""
from typing import Optional

from mmengine.config import Config

from ..export import (
    INPUT_KEY,
    atomic_output,
    evaluate_onnx,
    image_batches,
    onnx_input_kind,
    require_deploy_packages,
    set_input_kind,
)
from .qdq import count_qdq_nodes

CALIBRATION_METHODS = ('minmax', 'entropy', 'percentile')


class _CalibrationReader:
    """ONNX Runtime's CalibrationDataReader protocol over :func:`image_batches`."""

    def __init__(self, cfg: Config, images: int, normalized: bool, seed: int) -> None:
        self.batches = image_batches(cfg, 'train', normalized=normalized, limit=images,
                                     shuffle=True, seed=seed)
        self.count = 0

    def get_next(self) -> Optional[dict]:
        batch = next(self.batches, None)
        if batch is None:
            return None
        self.count += len(batch[0])
        return {'input': batch[0]}


def quantize_onnx(cfg: Config, fp32_onnx: str, output: str, calib_images: int = 256,
                  method: str = 'minmax', per_channel: bool = False,
                  evaluate: bool = True, seed: int = 0,
                  threads: Optional[int] = None) -> dict:
    """Quantize ``fp32_onnx`` (written by :func:`~repvgg_mm.apis.export_onnx`) to INT8
    QDQ ``output`` and measure FP32 and INT8 top-1 on the config's val set.

    Args:
        cfg (Config): The config the model was trained with (data, pipeline,
            normalisation).
        calib_images (int): Number of training images used for calibration.
        method (str): Calibration method: ``'minmax'``, ``'entropy'`` or
            ``'percentile'`` (ONNX Runtime's defaults for each).
        per_channel (bool): One weight scale per output channel instead of per tensor.
        evaluate (bool): Evaluate both models on the val split. Defaults to True.
        seed (int): Seed of the calibration draw.
        threads (int, optional): ONNX Runtime intra-op threads for the evaluation
            (default: ONNX Runtime's choice).

    Returns:
        dict: ``output``, ``method``, ``per_channel``, ``calib_images`` (used),
        ``qdq_nodes`` and, when evaluated, ``val_images``, ``fp32_top1``,
        ``int8_top1``, ``drop`` (points), ``fp32_img_s``, ``int8_img_s`` and
        ``speed_ratio`` (INT8 img/s over FP32 img/s, measured in the same process).
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(f'calibration method must be one of {list(CALIBRATION_METHODS)}, '
                         f'got {method!r}')
    if calib_images < 1:
        raise ValueError(f'calib_images must be >= 1, got {calib_images}')
    require_deploy_packages()
    input_kind = onnx_input_kind(fp32_onnx)  # refuses a missing file or one not ONNX
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = dict(minmax=CalibrationMethod.MinMax, entropy=CalibrationMethod.Entropy,
                   percentile=CalibrationMethod.Percentile)
    with atomic_output(output, {'FP32 model': fp32_onnx}) as tmp:
        reader = _CalibrationReader(cfg, calib_images, input_kind == 'normalized', seed)
        quantize_static(fp32_onnx, tmp, reader, quant_format=QuantFormat.QDQ,
                        per_channel=per_channel, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, calibrate_method=methods[method],
                        extra_options=dict(ActivationSymmetric=True,
                                           WeightSymmetric=True))
        if reader.count == 0:
            raise ValueError(f'no calibration images: the train split of config '
                             f'{cfg.filename!r} is empty')
        proto = onnx.load(tmp)
        if not any(p.key == INPUT_KEY for p in proto.metadata_props):
            set_input_kind(proto, input_kind)
            onnx.save(proto, tmp)
        qdq_nodes = count_qdq_nodes(tmp)
        if qdq_nodes == 0:
            raise RuntimeError(f'quantizing {fp32_onnx!r} produced no QuantizeLinear/'
                               'DequantizeLinear nodes; nothing written')
    report = dict(output=output, method=method, per_channel=per_channel,
                  calib_images=reader.count, qdq_nodes=qdq_nodes)
    if evaluate:
        fp32 = evaluate_onnx(fp32_onnx, cfg, 'val', threads)
        int8 = evaluate_onnx(output, cfg, 'val', threads)
        fp32_speed = fp32['images'] / fp32['seconds']
        int8_speed = int8['images'] / int8['seconds']
        report.update(val_images=fp32['images'], fp32_top1=fp32['top1'],
                      int8_top1=int8['top1'], drop=fp32['top1'] - int8['top1'],
                      fp32_img_s=fp32_speed, int8_img_s=int8_speed,
                      speed_ratio=int8_speed / fp32_speed)
    return report
