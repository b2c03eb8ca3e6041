"""Code generated from proto/cgraph.proto by tools/gen_proto. Do not edit."""
