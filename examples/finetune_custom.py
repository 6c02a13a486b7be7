"""Fine-tune SeMask on your own data (a folder dataset) from ImageNet-initialised weights.

    my_data/images/{train,val}/NAME.jpg   my_data/masks/{train,val}/NAME.png (class ids, 255 = ignore)
    my_data/classes.txt                   (one class name per line; line k = class id k)

    python examples/finetune_custom.py my_data --out work_dirs/my_run [--arch semask_swin_tiny_fpn] [--iters 4000]
    torchrun --nproc_per_node 2 examples/finetune_custom.py my_data ...     # several GPUs (or CPU processes)
"""

import argparse
import sys

from semask.data import folder
from semask.train import DataConfig, TrainConfig, Trainer, format_table

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("data")
parser.add_argument("--out", default="work_dirs/finetune")
parser.add_argument("--arch", default="semask_swin_tiny_fpn")
parser.add_argument("--iters", type=int, default=4000)
parser.add_argument("--crop", type=int, default=512)
parser.add_argument("--batch-size", type=int, default=8)
parser.add_argument("--no-imagenet", action="store_true", help="random init (offline tests)")
args = parser.parse_args()

train_set, val_set = folder(args.data, "train"), folder(args.data, "val")
crop, scale = (args.crop, args.crop), (4 * args.crop, args.crop)
config = TrainConfig(
    model=args.arch, pretrained_backbone=not args.no_imagenet, out_dir=args.out, iters=args.iters,
    batch_size=args.batch_size, lr=1e-4, weight_decay=1e-4, warmup_iters=min(1500, args.iters // 10), amp="bf16",
    eval_interval=max(args.iters // 4, 1), data=DataConfig(crop_size=crop, scale=scale, test_scale=scale))
trainer = Trainer(config, train_set=train_set, val_set=val_set)  # builds the model for the dataset's classes
metrics = trainer.fit()
if trainer.rank == 0:  # under torchrun every process gets here: one report
    if metrics:  # none when stopped before the first evaluation
        print(format_table(metrics))
    if trainer.stopped:
        print(f"stopped at iteration {trainer.iteration}: run the same command to resume")
    else:
        print(f"weights: {args.out}/final  ->  semask.create_model({args.arch!r}, pretrained='{args.out}/final')")
sys.exit(130 if trainer.stopped else 0)
