"""Kernel backends of Flex-Flash-Attention; each says what it supports and why it refuses."""
