"""The layout and columns of a preprocessed dataset: the contract between pipeline stages.

Everything downstream (training, evaluation, retrieval, serving, exploration) reads the
preprocessing output through these names only. Bump SCHEMA_VERSION on any change.

<data_dir>/
  manifest.json                 schema version, config, counts per stage (see Manifest)
  items.parquet                 ITEM_COLUMNS, one row per kept item, item_idx dense 0..n-1
  users.parquet                 USER_COLUMNS, one row per kept user, user_idx dense 0..n-1
  id_map/items.parquet          raw item id -> item_idx, append-only across runs (stable)
  id_map/users.parquet          raw user id -> user_idx, append-only across runs (stable)
  interactions/{train,valid,test}/   INTERACTION_COLUMNS
  histories/                    HISTORY_COLUMNS, one row per user
  examples/{train,valid,test}/  EXAMPLE_COLUMNS, one row per positive with its candidates
  rejects/                      REJECT_COLUMNS, every malformed input row with its reason
  world/                        synthetic world ground truth (synthetic source only)
"""

from __future__ import annotations

SCHEMA_VERSION = 1

ITEMS_FILE = "items.parquet"
USERS_FILE = "users.parquet"
MANIFEST_FILE = "manifest.json"
ID_MAP_DIR = "id_map"
INTERACTIONS_DIR = "interactions"
HISTORIES_DIR = "histories"
EXAMPLES_DIR = "examples"
REJECTS_DIR = "rejects"
WORLD_DIR = "world"
SPLITS = ("train", "valid", "test")

# item_idx:int64, item_id:string (raw id), title:string, category:string (primary
# category/genre, "" if none), text:string (title + categories + tags: what the ranker
# reads), popularity:int64 (positives in the train split)
ITEM_COLUMNS = ("item_idx", "item_id", "title", "category", "text", "popularity")

# user_idx:int64, user_id:string (raw id), n_train:int64
USER_COLUMNS = ("user_idx", "user_id", "n_train")

# user_idx:int64, item_idx:int64, timestamp:int64 (unix seconds), label:float32 (1 positive,
# 0 explicit negative), rating:float32 (NaN when the source has none), event:string
INTERACTION_COLUMNS = ("user_idx", "item_idx", "timestamp", "label", "rating", "event")

# user_idx:int64, history:list<int64> (last max_history train positives, oldest first),
# valid_item:int64 (-1 if none), test_item:int64 (-1 if none). At test time the user's
# history is history + [valid_item].
HISTORY_COLUMNS = ("user_idx", "history", "valid_item", "test_item")

# user_idx:int64, history:list<int64> (items before the target, oldest first),
# history_text:string (the history rendered for prompts), candidates:list<int64>
# (the positive first, then sampled negatives the user never interacted with),
# labels:list<float32> (1.0 for the positive, 0.0 for negatives; a rating target when
# the loss is mse), candidate_texts:list<string>, timestamp:int64
EXAMPLE_COLUMNS = (
    "user_idx", "history", "history_text", "candidates", "labels", "candidate_texts", "timestamp",
)

# source:string (file), row:int64 (line/row number in the file, -1 if unknown),
# reason:string (machine-readable code), detail:string, raw:string (the row as read)
REJECT_COLUMNS = ("source", "row", "reason", "detail", "raw")

# The serving event log (written by rayrec.serving.eventlog, read back by the feedback loop
# and off-policy evaluation). Datasets under <event_log_dir>/impressions, /feedback and
# /explanations.
# impressions: one row per shown item.
#   request_id:string, timestamp:float64 (unix s), user_id:string ("" for anonymous),
#   user_idx:int64 (-1 when unknown), policy:string, position:int64 (0-based slot),
#   item_idx:int64, item_id:string, score:float64 (final ranking score),
#   propensity:float64 (probability the policy shows this item in this slot),
#   n_candidates:int64, degraded:bool
IMPRESSION_COLUMNS = (
    "request_id", "timestamp", "user_id", "user_idx", "policy", "position", "item_idx",
    "item_id", "score", "propensity", "n_candidates", "degraded",
)
# feedback: request_id:string, timestamp:float64, item_idx:int64, item_id:string, reward:float64
FEEDBACK_COLUMNS = ("request_id", "timestamp", "item_idx", "item_id", "reward")
# Both also carry source:string, the client key's id (rayrec.serving.api.key_id) that sent the
# request or the feedback; null on an endpoint without client keys and in logs written before
# it existed (readers fill it). The feedback loop trains only on attributed traffic.
SOURCE_COLUMN = "source"
# explanations: one row per item the generation deployment wrote a sentence for (served or not)
#   request_id:string, timestamp:float64, position:int64, item_idx:int64, item_id:string,
#   text:string, status:string (explained = served, ungrounded = withheld), unsupported:string
#   (what the grounding check found, "; "-joined), seconds:float64 (generation time)
EXPLANATION_COLUMNS = ("request_id", "timestamp", "position", "item_idx", "item_id", "text", "status",
                       "unsupported", "seconds")
