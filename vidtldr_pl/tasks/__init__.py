"""Lightning tasks: UMT video-text retrieval (official ITC + ITM re-ranking) and video classification (VideoMAE's
multi-view protocol)."""
from .classification import ClassificationTask
from .retrieval import RetrievalEvalData, RetrievalTask, rerank_scores

__all__ = ["ClassificationTask", "RetrievalEvalData", "RetrievalTask", "rerank_scores"]
