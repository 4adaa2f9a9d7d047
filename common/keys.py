"""Record keys: the names of everything that crosses the SuperLink.

Kebab-case like Flower's own keys. Flower's FedAvg reads ``arrays``, ``config``,
``metrics`` and ``num-examples`` and injects ``server-round``; the strategies add
the method keys below and the client reads them from the train config.
"""

# Flower's keys (FedAvg defaults)
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
NUM_EXAMPLES = "num-examples"
SERVER_ROUND = "server-round"

# Local-training settings in the train ConfigRecord (server-controlled per round)
LR = "lr"
MOMENTUM = "momentum"
WEIGHT_DECAY = "weight-decay"
LOCAL_EPOCHS = "local-epochs"
BATCH_SIZE = "batch-size"
# Sent only when lr-schedule is not constant: the client scales LR by
# common.federation.scheduled_lr(server-round, NUM_ROUNDS).
LR_SCHEDULE = "lr-schedule"
NUM_ROUNDS = "num-server-rounds"

# Method terms injected by the strategies; a present key switches its term on
PROXIMAL_MU = "proximal-mu"  # FedProx (Flower's FedProx injects this name)
MOON_MU = "moon-mu"
MOON_TAU = "moon-tau"
BALANCED_CE = "balanced-ce"  # FedETF: balanced softmax instead of plain CE
# FedDifRC (a present weight key switches its term on)
TDCL_WEIGHT = "tdcl-weight"
TDCL_TAU = "tdcl-tau"
TDCL_NEGATIVES = "tdcl-negatives"  # self-supervised: negatives used per batch
NDCR_WEIGHT = "ndcr-weight"
NDCR_MODE = "ndcr-mode"
NDCR_TAU = "ndcr-tau"
SELF_SUPERVISED = "self-supervised"
FEATURE_STORE = "feature-store"  # absolute path of the instance-feature store
FEATURE_SOURCE = "feature-source"  # "latent-upload": features ride in train Messages
INSTANCE_FEATURES = "instance-features"  # ArrayRecord: a node's own feature rows
# SemanticFL
KD_WEIGHT = "kd-weight"
KD_TEMPERATURE = "kd-temperature"
KD_FORM = "kd-form"  # "coordinates" (the earlier reading) | "classes" | "posterior"
KD_TEACHER_TAU = "kd-teacher-tau"  # posterior form: the teacher's fitted temperature
KD_TEACHER_SMOOTHING = (
    "kd-teacher-smoothing"  # its control: off-label mass of smoothed labels
)
CON_WEIGHT = "con-weight"
CON_TAU = "con-tau"

# Server -> client guidance: an extra ArrayRecord in each train Message
GUIDANCE = "guidance"
TEXT_ANCHORS = "text-anchors"  # (C, d)
VISUAL_ANCHORS = "visual-anchors"  # (C, d)
CLASSIFIER = "classifier"  # ArrayRecord: the anchor classifier's frame
CLASSIFIER_FRAME = "classifier-frame"  # (C, C) the anchor classifier's class vectors

# Latent-upload query round (server_app/latent_query.py, client_app/latents.py)
QUERY = "query"  # what a query Message asks for
QUERY_VAE_LATENTS = "vae-latents"
RESOLUTION = "resolution"
MICRO_BATCH = "micro-batch"
NEEDS_LABELS = "needs-labels"
VAE_FINGERPRINT = "vae-fingerprint"
SHARED = "shared"  # reply: whether the node opted in
LATENTS = "latents"  # (N, c, h, w) VAE posterior means
SAMPLE_IDS = "sample-ids"  # (N,) the node's sample ids (seed each sample's noise)
SAMPLE_LABELS = "sample-labels"  # (N,) sent only when the recipe needs them
COND = "cond"  # (N, S, d) features under S prompts; COND_CLASSES (N, S) their classes
COND_CLASSES = "cond-classes"
NOISE = "noise"  # (N, d) features under the true-class prompt

# FedDDPM (docs/fedddpm.md): diffusion-training settings in the train config
DDPM_PHASE = "ddpm-phase"  # "pretrain" (phase a, once) or "round"
DDPM_STEPS = "ddpm-steps"
DDPM_LR = "ddpm-lr"
DDPM_BATCH_SIZE = "ddpm-batch-size"
DDPM_PROMPT_DROPOUT = "ddpm-prompt-dropout"
TEXT_STATES = "text-states"  # extra ArrayRecord: (C + 1, L, w) prompt states
CLASS_COUNTS = "class-counts"  # phase-a reply metric: the client's label counts
TRAIN_DDPM_LOSS = "train-ddpm-loss"

# Client reply metrics
TRAIN_LOSS = "train-loss"
TRAIN_CE = "train-ce"
TRAIN_PROX = "train-prox"
TRAIN_MOON = "train-moon"
TRAIN_TDCL = "train-tdcl"
TRAIN_NDCR = "train-ndcr"
TRAIN_KD = "train-kd"
TRAIN_CON = "train-con"
TRAIN_ACCURACY = "train-accuracy"
TRAIN_SECONDS = "train-seconds"
TRAIN_STEPS = "train-steps"
TRAIN_CUDA = "train-cuda"  # 1 if the client trained on a CUDA device
TRAIN_GPU_PEAK_MB = "train-gpu-peak-mb"  # peak GPU memory while training, MiB
INSTANCE_GUIDED = "instance-guided"  # 1 if FedDifRC's instance terms ran
EVAL_LOSS = "eval-loss"
EVAL_ACCURACY = "eval-accuracy"
EVAL_CLASS_CORRECT = "eval-class-correct"  # per class, correct / the client's n
EVAL_CLASS_TOTAL = "eval-class-total"  # per class, samples / the client's n
EVAL_BALANCED_ACCURACY = (
    "eval-balanced-accuracy"  # mean per-class accuracy, all clients
)

# Server-side (central) evaluation metrics
CENTRAL_ACCURACY = "central-accuracy"
CENTRAL_LOSS = "central-loss"
# With eval-bn-images and eval-aggregated-too: the same round's score with
# BatchNorm statistics as aggregated (central-accuracy then has them recomputed).
CENTRAL_ACCURACY_AGGREGATED = "central-accuracy-aggregated"
CENTRAL_LOSS_AGGREGATED = "central-loss-aggregated"

# Node-local state (context.state) on the client
PREV_LOCAL_MODEL = "prev-local-model"  # MOON's z_prev comes from this model

# Node config (simulation injects both; deployment passes --node-config)
PARTITION_ID = "partition-id"
NODE = "node"  # reply ConfigRecord {partition-id}: the server sorts replies by it
NUM_PARTITIONS = "num-partitions"
SHARE_LATENTS = "share-latents"  # this node opts in to latent upload
