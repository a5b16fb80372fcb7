/*
 * server_page.S - the server's web page (runtime/apps/server_page.html: one
 * self-contained HTML file, no external assets) as read-only data, served
 * at / by server.c. Paths from the top directory, as vocab.S.
 */
    .section .rodata.ldm_server_page, "a"
    .balign 16
    .globl ldm_server_page
    .type ldm_server_page, @object
ldm_server_page:
    .incbin "runtime/apps/server_page.html"
    .globl ldm_server_page_end
ldm_server_page_end:
    .size ldm_server_page, ldm_server_page_end - ldm_server_page
    .section .note.GNU-stack, "", @progbits
