"""Foundation shared by every layer, without torch: files and content keys, versions, paths."""
