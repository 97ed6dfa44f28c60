"""The semantic cache's own parts (issue #17 part 3; docs/semantic-cache.md).

`eligibility` says which requests may be answered by similarity and what text to compare;
`embedder` turns that text into a vector with a model shipped in a PyPI wheel; `guard`
keeps near-misses apart; `index` holds the vectors per owner, model and context, bounded;
`service` runs the embedding off the event loop and ties them together. The exact cache
(`capgate.cache`) calls `SemanticCache`; nothing on the request path imports this package
unless the semantic cache is on.
"""
