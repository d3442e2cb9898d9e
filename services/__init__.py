"""The pipeline's stages (`python -m services.<stage>`) and the code they share.

Importing this package, which every stage, the runner and the sweep's workers do first, points
ultralytics' settings and caches at <project>/.yolo before anything can import ultralytics: a stage
whose first contact with it is torch.load of a checkpoint (which imports ultralytics to unpickle it)
would otherwise write them under $HOME/.config/Ultralytics or /tmp.
"""
from .common.yolo_env import point_into_project

point_into_project()
