"""Work a conversion need not repeat: compressed frames, converted layers, blob locations.

frames.py  content-addressed compressed payload frames (local directory)
memo.py    source layer -> converted layer, and where converted blobs were pushed
sources.py the frame sources one conversion draws from (cache, then earlier images)
"""

#: Layer annotation naming the encoder that wrote the payload frames (see
#: chunked.writer.encoder_identity): frames of an earlier image are reused
#: only when it matches, so the output stays the same bytes.
ENCODER_ANNOTATION = "io.github.zconv.encoder"
