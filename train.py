"""Train a neurotwin model: `python train.py --config configs/demo.yaml --output_dir runs/demo`."""

from neurotwin.cli.train import main

if __name__ == "__main__":
    main()
