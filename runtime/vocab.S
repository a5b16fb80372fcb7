/*
 * vocab.S - the CLIP BPE vocabulary (runtime/vocab/bpe_simple_vocab_16e6.txt.gz,
 * openai/CLIP, MIT licence: runtime/vocab/SOURCE.md) as read-only data, so
 * the executables need no --vocab file. clip_tokenizer_load_builtin()
 * (tokenizer.c) inflates it; a program that never calls it does not link it.
 */
    .section .rodata.ldm_clip_vocab, "a"
    .balign 16
    .globl ldm_clip_vocab_gz
    .type ldm_clip_vocab_gz, @object
ldm_clip_vocab_gz:
    .incbin "runtime/vocab/bpe_simple_vocab_16e6.txt.gz"
    .globl ldm_clip_vocab_gz_end
ldm_clip_vocab_gz_end:
    .size ldm_clip_vocab_gz, ldm_clip_vocab_gz_end - ldm_clip_vocab_gz
    .section .note.GNU-stack, "", @progbits
