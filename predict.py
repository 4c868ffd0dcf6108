"""Predict with a trained run and score it: `python predict.py --output_dir runs/demo`."""

from neurotwin.cli.predict import main

if __name__ == "__main__":
    main()
