"""Weight-space analysis: truncated SVD, exact single linkage, cluster purity and epoch order."""
