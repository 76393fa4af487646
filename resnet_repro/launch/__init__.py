"""`resnet-repro run`: the command (command.py), the scripts it writes for torchrun and SLURM (scripts.py), the
local launcher that runs children here, one after another or side by side (local.py), and the miniatures
(miniature.py)."""
