# Also log to TensorBoard: add './_base_/options/tensorboard.py' (path relative to your
# config) to a config's `_base_` list. Scalars then go both to the JSON log
# (<work_dir>/<timestamp>/vis_data/scalars.json, read by tools/analysis/plot_curves.py)
# and to TensorBoard event files in the same folder:
#   tensorboard --logdir work_dirs/<config name>
# Needs `pip install tensorboard` (listed in requirements/optional.txt); without it the
# run stops at start-up with a message saying so.
vis_backends = [dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')]
visualizer = dict(type='UniversalVisualizer', vis_backends=vis_backends)
