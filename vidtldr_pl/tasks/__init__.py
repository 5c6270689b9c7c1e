"""Lightning tasks: UMT video-text retrieval evaluation (official ITC + ITM re-ranking protocol)."""
from .retrieval import RetrievalEvalData, RetrievalTask, rerank_scores

__all__ = ["RetrievalEvalData", "RetrievalTask", "rerank_scores"]
