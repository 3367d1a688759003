# INT8 quantization-aware training (QAT) of RepVGG-A0 on ImageNet: the original
# repository's route to an INT8 RepVGG that keeps its accuracy (its quantization/ folder
# and tools/insert_bn.py). Input: a float checkpoint of configs/repvgg-a0.py
# (training-time or fused, any format: ours, the original's, MMPretrain's, timm's, or
# the zoo name 'repvgg-a0'); output: an INT8 QDQ ONNX model.
#
#   python tools/qat.py configs/qat/repvgg-a0_qat.py CHECKPOINT repvgg-a0_int8.onnx
#   python tools/qat.py ... --launcher pytorch        # under torchrun, one per GPU
#
# 1. The checkpoint is fused, and a BatchNorm goes after every fused 3x3 conv: running
#    statistics recorded on qat.bn_images training images, weight sqrt(var + eps) and
#    bias mean + the conv's bias, so the outputs are unchanged (checked).
# 2. torchao's PT2E QAT fake-quantizes it (repvgg_mm/models/qat.py): signed INT8 with
#    zero point 0, per-tensor activations, per-output-channel weights quantized after
#    the BN is folded into them; the ranges are calibrated (min-max) on qat.calib_images
#    training images through the test pipeline, as tools/quantize.py does.
# 3. The Runner trains it (checkpoints, logs, --resume, distributed), then the BNs are
#    folded and the model is written as QuantizeLinear/DequantizeLinear ONNX.
#
# The schedule is the original's QAT example: 20 epochs, lr 1e-3 for a batch of 256,
# weight decay 4e-5, the base's train pipeline; the cosine decay without warm-up is our
# choice (the original's example does not fix one).
_base_ = ['../repvgg-a0.py']

qat_epochs = 20
# As the original's quant_qat_train.py (--fixbn, --fixobserver): the BN statistics stop
# moving once epoch > 2 * epochs // 8 has been trained, the observed ranges once epoch >
# 3 * epochs // 8 has; counted from 0, the first frozen epochs are these.
model = dict(_delete_=True, type='QATClassifier', float_model={{_base_.model}},
             input_size=224, freeze_bn_epoch=2 * qat_epochs // 8 + 2,
             freeze_observer_epoch=3 * qat_epochs // 8 + 2)
# Several GPUs: BN statistics and ranges averaged over the ranks after every iteration.
custom_hooks_qat = [dict(type='QATSyncHook')]
qat = dict(bn_images=256, calib_images=256, seed=0)

optim_wrapper = dict(optimizer=dict(lr=1e-3, weight_decay=4e-5))
param_scheduler = dict(warmup=0, end=qat_epochs)
train_cfg = dict(max_epochs=qat_epochs, val_interval=1, dynamic_intervals=None)
