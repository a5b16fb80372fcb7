/*
 * ckpt.h - PyTorch `.ckpt` checkpoints (torch.save's zip format) read
 * without Python and without running anything the file asks for.
 *
 * A .ckpt is a zip archive: `<dir>/data.pkl` (a pickle, protocol 2 as
 * torch.save writes it), `<dir>/data/<key>` (the raw little-endian bytes of
 * each storage, usually stored uncompressed, 64-byte aligned) and
 * `<dir>/version`; <dir> is "archive" or the file's stem. The pickle is run
 * by a restricted virtual machine that knows only the opcodes such a file
 * uses and only the globals needed to rebuild dicts and tensors (plus a few
 * harmless ones PyTorch Lightning and numpy leave in real checkpoints, kept
 * as opaque values); anything else is refused with the archive member, the
 * byte offset and the opcode or global. No callable is ever called: the
 * machine builds the values itself.
 *
 * The tensors of the `state_dict` entry of the top-level dict (or of the
 * top-level dict itself when it has none) become the tensors of an StFile,
 * as st_open hands them out for a safetensors file: data pointers into the
 * mapped archive (stored members) or into a read-only anonymous mapping
 * holding the inflated members (deflated ones). Only contiguous tensors are
 * accepted; each one's storage member is CRC-checked once.
 */
#ifndef LDM_CKPT_H
#define LDM_CKPT_H

#include <stddef.h>
#include <stdint.h>

#include "safetensors.h"

/* Does the file start like a zip archive (a local file header, or an
 * empty archive's end record)? */
int ckpt_is_zip(const uint8_t *p, size_t n);
/* Does it start like the legacy (pre-1.6, non-zip) torch.save format? */
int ckpt_is_legacy(const uint8_t *p, size_t n);

/* Fill f's tensors from the archive f->map (f->size bytes; f->path names it
 * in messages). 0, or -1 with ldm_fail naming the file and what is wrong;
 * either way the caller releases f with st_close. */
int ckpt_parse(StFile *f);

#endif
