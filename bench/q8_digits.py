"""Quality of 8-bit AdamW against float32 AdamW on the bundled digits data: the runs of
lrcore.demo.q8_quality (each one `lrcore train --optimizer adamw [--state-dtype int8] ...`).

Run: python bench/q8_digits.py [out.png]
 (the same as: python -m lrcore.demo.q8_quality [--plot out.png])
"""
import sys

from lrcore.demo import q8_quality

if __name__ == "__main__":
    q8_quality.main(["--plot", sys.argv[1]] if len(sys.argv) > 1 else [])
