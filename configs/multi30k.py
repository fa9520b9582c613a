r"""Multi30k English->German: a real-data learning run on a CPU.

Run card
  Data: a folder with {train,val}.{en,de} (plain or .gz), e.g. the raw
  Multi30k task-1 files (Elliott et al., 2016; 29000 train and 1014 val
  pairs of image descriptions). No path is built in:
    python train.py --config=configs/multi30k.py \
        --config.data.dir=../shared/data/multi30k --workdir=runs/multi30k
  Model: 7.6M parameters (3 layers, d_model 256, d_ff 1024, 4 heads), an
  8000-piece shared BPE vocabulary (trained in 0.4 s). Input: packed rows of
  128 tokens, 4096 source + 4096 target token slots per step, 94.8% of them
  real tokens, 116 steps per epoch: 1800 steps are about 15.5 epochs.
  Result (2026-12-03, 2 cores of an AMD EPYC family 25 model 17 with
  AVX512-BF16, "auto" = bfloat16 training): 55 min 37 s end to end
  (1.61-1.8 s per step, six dev evaluations, averaging and beam-4 decoding
  of val in 34 s), val sacreBLEU 40.03 (lowercase 40.17, tokenized 40.18),
  0 empty outputs, the mean of the checkpoints of steps 1500, 1600, 1636,
  1700 and 1800 (1636: the 10-minute one). Greedy dev BLEU on the first 200
  val sentences: 14.4 / 28.4 / 33.2 / 35.1 / 38.5 / 37.0 at steps 300 to 1800.
  Curve: python benchmarks/plot_curve.py --workdir=runs/multi30k
  On a CPU without bfloat16 instructions ("auto" = float32; an AMD EPYC Zen 3
  took 3.71 s per step for this model on 2026-11-25) the same command takes
  about two hours; it has not been run there with this recipe.
  The raw folder has no test split, so the final evaluation runs on val (the
  dev set too): beam, alpha and averaging were chosen on val only. Put
  test.{en,de} in the folder and pass --config.data.test_split=test to
  evaluate on test2016.

  How the recipe was chosen (val sacreBLEU, beam 4, all 1014 sentences; the
  full table with commands is in docs/results.md):
    1500 steps, warmup 1000, no averaging (the recipe before)    37.18
      (AMD EPYC Zen 5, 2026-12-02, 35 min; 36.52 on 2026-11-24 with the
      paper's search, which left 9 outputs empty)
    1800 steps (the time the 60-minute budget leaves), warmup 800,
      a checkpoint every 100 steps, the last 5 averaged (this file)   40.03
      (decoded in bfloat16; in float32, decode.dtype's default since, 40.06)
    the same run's last checkpoint alone (--average_last=1)          37.88
    the same, alpha 1.0 instead of the paper's 0.6                  40.31
  Why: the old run's dev loss was still falling at step 1500, so the budget's
  spare 25 minutes go to more steps; a shorter warmup reaches the peak rate
  (2.2e-3) earlier; averaging the last 5 checkpoints (§6.1) smooths the
  still-high learning rate of a short run's end (+2.2 here). Alpha stays
  0.6: 1.0's +0.25 on the dev set itself is within what tuning to it gives. Dropout (0.1) and label
  smoothing (0.1) stay the paper's: the dev loss kept falling to the end.

Deviation from the paper: a smaller model (3 layers, d_model 256, d_ff 1024,
4 heads) suited to 29k sentence pairs, a shorter warmup for the short run,
and checkpoints every 100 steps (the paper averages 10-minute checkpoints).
"""

from configs import common


def get_config(arg=None):
  if arg:  # No variants.
    raise ValueError(f"configs/multi30k.py has no variants, got {arg!r}; use "
                     "--config=configs/multi30k.py.")
  config = common.get_base_config("base")
  d = config.data
  d.source = "text"  # data.dir is required: --config.data.dir=/path/to/multi30k.
  d.dev_split = "val"
  d.test_split = "val"  # The raw folder has no test split; see the run card.
  d.max_length = 128
  d.batch_tokens = 4096

  m = config.model
  m.vocab_size = 8000
  m.num_layers = 3
  m.d_model = 256
  m.d_ff = 1024
  m.num_heads = 4  # d_k = d_v = 64, dropout 0.1 as in the base model.

  t = config.train
  t.num_steps = 1800  # About 15.5 epochs.
  t.warmup_steps = 800  # Peak rate 256^-0.5 * 800^-0.5 = 2.2e-3 (Eq. 3).
  t.log_every_steps = 25
  t.eval_every_steps = 300
  t.eval_bleu_sentences = 200
  t.checkpoint_every_steps = 100
  t.keep_checkpoints = 10

  # decode.average_last = 5, as in the paper (§6.1): steps ~1500-1800.
  config.lock()
  return config
