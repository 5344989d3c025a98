"""Every component id of the dashboard, in one place (a duplicate id makes callbacks silently not fire)."""

# shell
URL = "url"
SESSION = "session-id"
TEXT = "text-input"
ANALYZE = "analyze-button"
STATUS = "status-line"
MESSAGE = "message"
POLL = "analysis-poll"
RESULT_KEY = "result-key"  # the analysis this tab shows
PENDING = "pending-key"  # the analysis this tab waits for
GENERATED = "generated-text"
PAGE_PREFIX = "page-"  # page containers: page-overview, page-attention, ...
NAV_PREFIX = "nav-"  # navigation links: nav-overview, ...
THEME = "theme"  # "light" | "dark", kept in the browser's local storage
THEME_SWITCH = "theme-switch"
PLACEMENT = "placement-badge"  # device · dtype · attention backend, in the header
PROVIDER = "mantine-provider"
NOTIFY = "notifications"
SOURCE = "source-select"  # what the tab shows: the live text or a saved capture
LIMIT = "token-limit"
PROGRESS = "analysis-progress"
INPUT_CARD = "input-card"

# overview
OV_SUMMARY = "overview-summary"
OV_STAT = "overview-statistic"
OV_GRID = "overview-head-grid"
OV_MASSIVE = "overview-massive"
OV_ENTROPY = "overview-entropy"
OV_TABLE = "overview-head-table"
OV_CARDS = "overview-cards"

# attention
AT_LAYER = "attention-layer"
AT_HEAD = "attention-head"
AT_START = "attention-window-start"
AT_STOP = "attention-window-stop"
AT_STRIP_VALUE = "attention-strip-value"
AT_PATTERN = "attention-pattern"
AT_STRIP = "attention-strip"
AT_NOTE = "attention-note"
AT_POLL = "attention-poll"
AT_POSITIONS = "attention-positions"  # statistics along positions (WebGL, min/max decimated)
AT_POS_STATS = "attention-position-stats"
AT_ZOOM = "attention-zoom"  # the positions plot's x range, from its relayout events (clientside filter)

# reasoning
RS_PROMPT = "reasoning-prompt"
RS_NEW_TOKENS = "reasoning-new-tokens"
RS_GENERATE = "reasoning-generate"
RS_POLL = "reasoning-poll"
RS_PENDING = "reasoning-pending"
RS_STATUS = "reasoning-status"
RS_SUMMARY = "reasoning-summary"
RS_PROFILE = "reasoning-profile"
RS_FAI = "reasoning-fai-strip"
RS_WAAD = "reasoning-waad-strip"

# interventions
IV_TYPE = "edit-type"
IV_LAYER = "edit-layer"
IV_HEAD = "edit-head"
IV_KEYS = "edit-keys"
IV_VALUE = "edit-value"
IV_ADD = "edit-add"
IV_CLEAR = "edit-clear"
IV_EDITS = "edit-list"
IV_EDITS_VIEW = "edit-list-view"
IV_RUN = "edit-run"
IV_POLL = "edit-poll"
IV_PENDING = "edit-pending"
IV_KEY = "edit-result-key"
IV_STATUS = "edit-status"
IV_SHOW_LAYER = "edit-show-layer"
IV_SHOW_HEAD = "edit-show-head"
IV_NEXT = "edit-next-token"
IV_PATTERNS = "edit-patterns"
IV_TASK = "spec-task"
IV_TEST = "spec-test"
IV_SPEC = "spec-text"
IV_DOWNLOAD_BUTTON = "spec-download-button"
IV_DOWNLOAD = "spec-download"

# circuits / probes
CI_TASK = "circuits-task"
CI_RUN = "circuits-run"
CI_PAIRS = "circuits-pairs"
CI_TOPK = "circuits-top-k"
CI_IG = "circuits-ig-steps"
CI_POLL = "circuits-poll"
CI_PENDING = "circuits-pending"
CI_KEY = "circuits-key"
CI_STATUS = "circuits-status"
CI_GRAPH = "circuits-graph"
PR_TASK = "probes-task"
PR_RUN = "probes-run"
PR_N = "probes-examples"
PR_POLL = "probes-poll"
PR_PENDING = "probes-pending"
PR_KEY = "probes-key"
PR_STATUS = "probes-status"
PR_CURVES = "probes-curves"

# runs (the DuckDB of lens run)
RU_TABLE = "runs-table"
RU_METRIC = "runs-metric"
RU_COMPARE = "runs-compare"
RU_SWEEP = "runs-sweep"
RU_SPEC = "runs-spec"
RU_NOTE = "runs-note"
RU_STAMP = "runs-table-stamp"  # which file state and metric the run list shows (redrawn only when they change)

# census (a store of lens capture --dataset)
CE_STAT = "census-statistic"
CE_LAYER = "census-layer"
CE_HEAD = "census-head"
CE_DIST = "census-distributions"
CE_DORMANT = "census-dormant-grid"
CE_OUTLIERS = "census-outliers"
CE_STRIP = "census-strip"
CE_NOTE = "census-note"

# runs page: the sweep heatmap's pickers, the compare note, the spec's title
RU_SWEEP_PICK = "runs-sweep-pick"
RU_SWEEP_X = "runs-sweep-x"
RU_SWEEP_Y = "runs-sweep-y"
RU_CONDITION = "runs-condition"
RU_COMPARE_NOTE = "runs-compare-note"
RU_SPEC_TITLE = "runs-spec-title"
# census page: the outlier head's layer, which extremes, the token strip's caption
CE_OUT_LAYER = "census-outlier-layer"
CE_KIND = "census-outlier-kind"
CE_STRIP_NOTE = "census-strip-note"
