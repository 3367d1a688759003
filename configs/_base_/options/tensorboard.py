# Also log to TensorBoard: add './_base_/options/tensorboard.py' (path relative to your
# config) to a config's `_base_` list; it composes with the other option files (the
# runner appends vis_backends_<name> entries to visualizer.vis_backends). Scalars then
# go both to the JSON log (<work_dir>/<timestamp>/vis_data/scalars.json, read by
# tools/analysis/plot_curves.py) and to TensorBoard event files in the same folder:
#   tensorboard --logdir work_dirs/<config name>
# Needs `pip install tensorboard` (listed in requirements/optional.txt); without it the
# run stops at start-up with a message saying so.
vis_backends_tensorboard = [dict(type='TensorboardVisBackend')]
