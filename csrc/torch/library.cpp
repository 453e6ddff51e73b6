// The `structops` operator library.  Each kernel family adds its schemas in its own
// TORCH_LIBRARY_FRAGMENT (csrc/torch/<family>_schemas.cpp); this file only defines the namespace
// once, so that every family registers the same way.
#include <torch/library.h>

TORCH_LIBRARY(structops, m) {}
