"""Keys of the batch dicts that the training loop hands to the module."""

CONTROL = "control"  # [B, S, G] basal (control) cells of the sentence's line
TARGET = "target"  # [B, S, G] observed perturbed cells
PERTURBATION = "perturbation"  # [B, E] the query perturbation's embedding
CANDIDATES = "candidates"  # [B, K, E] embeddings of its retrieved train perturbations
BATCH_INDEX = "batch_index"  # [B, S] batch (gem group) of each control cell
RESPONSES = "responses"  # [B, R, G] retrieved observed train responses (mean shifts)
RESPONSE_FEATURES = "response_features"  # [B, R, F] what each response is (kind, similarity, size)
RESPONSE_MASK = "response_mask"  # [B, R] True where a response slot is filled

#: What a retrieved response can be, relative to the query (cell line L, perturbation g):
#: g in another line; a GenePT neighbour of g in L; a neighbour's mean over the other lines;
#: L's context (its average train-perturbed cell); the planted truth of the oracle check.
RESPONSE_KINDS = (
    "same_gene_other_line",
    "neighbour_same_line",
    "neighbour_other_lines",
    "context",
    "oracle",
)
#: Per response: one-hot kind, GenePT cosine similarity to the query, log1p(cells) / 10.
N_RESPONSE_FEATURES = len(RESPONSE_KINDS) + 2
