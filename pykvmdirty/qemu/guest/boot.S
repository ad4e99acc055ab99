/*
 * boot.S - reset vector to CPL3 for the pykvmdirty QEMU test guest.
 *
 * Loaded with `qemu-system-x86_64 -bios guest.bin`: the 64 KiB image sits
 * just below 4 GiB and the vCPU starts in real mode at 0xFFFFFFF0 with a CS
 * base of 0xFFFF0000.  This file:
 *   real mode   : enable A20, load the GDT, set CR0.PE, far jump;
 *   32-bit mode : copy the payload (C code, guest.c) from ROM to RAM at
 *                 PAYLOAD_ADDR, zero its bss, build identity-mapping page
 *                 tables with 2 MiB user pages (PT_GIB GiB), enable PAE,
 *                 EFER.LME and paging, far jump to 64-bit code in RAM;
 *   64-bit CPL0 : call guest_init() (reads the host's parameters, calibrates
 *                 the TSC), then iretq to guest_main() at CPL3 with IF=0.
 * Every constant of the memory layout comes from the build (-D...), whose
 * single source is pykvmdirty/qemu/layout.py.
 */

#define GDT_CODE32 0x08
#define GDT_DATA   0x10
#define GDT_CODE64 0x18
#define GDT_UDATA  0x20
#define GDT_UCODE  0x28
#define ROM_BASE   0xFFFF0000

	.section .rom, "ax"
	.code16
	.globl start16
start16:
	cli
	cld
	/* fast A20: without it every address with bit 20 set aliases */
	inb	$0x92, %al
	orb	$0x02, %al
	andb	$0xfe, %al
	outb	%al, $0x92
	lgdtl	%cs:(gdt_desc - ROM_BASE)
	movl	%cr0, %eax
	orl	$1, %eax
	movl	%eax, %cr0
	ljmpl	$GDT_CODE32, $start32

	.code32
start32:
	movw	$GDT_DATA, %ax
	movw	%ax, %ds
	movw	%ax, %es
	movw	%ax, %ss
	movw	%ax, %fs
	movw	%ax, %gs
	movl	$STACK0_TOP, %esp

	/* payload: ROM -> RAM */
	movl	$_payload_lma, %esi
	movl	$_payload_vma, %edi
	movl	$_payload_size, %ecx
	rep movsb
	/* bss */
	movl	$_bss_start, %edi
	movl	$_bss_end, %ecx
	subl	%edi, %ecx
	xorl	%eax, %eax
	rep stosb

	/* page tables: PML4 at PT_BASE, PDPT at +4K, PT_GIB page directories after */
	movl	$PT_BASE, %edi
	movl	$((2 + PT_GIB) * 1024), %ecx
	xorl	%eax, %eax
	rep stosl
	movl	$(PT_BASE + 0x1000 + 7), PT_BASE          /* PML4[0] -> PDPT, P|RW|US */
	movl	$(PT_BASE + 0x1000), %edi                  /* PDPT */
	movl	$(PT_BASE + 0x2000 + 7), %eax
	movl	$PT_GIB, %ecx
1:	movl	%eax, (%edi)
	addl	$0x1000, %eax
	addl	$8, %edi
	loop	1b
	movl	$(PT_BASE + 0x2000), %edi                  /* PDs: 2 MiB pages, P|RW|US|PS */
	movl	$0x87, %eax
	xorl	%edx, %edx                                 /* high half of the address */
	movl	$(PT_GIB * 512), %ecx
2:	movl	%eax, (%edi)
	movl	%edx, 4(%edi)
	addl	$0x200000, %eax
	adcl	$0, %edx
	addl	$8, %edi
	loop	2b

	movl	%cr4, %eax
	orl	$(1 << 5), %eax                            /* PAE */
	movl	%eax, %cr4
	movl	$PT_BASE, %eax
	movl	%eax, %cr3
	movl	$0xC0000080, %ecx                          /* EFER */
	rdmsr
	orl	$(1 << 8), %eax                            /* LME */
	wrmsr
	movl	%cr0, %eax
	orl	$(1 << 31), %eax                           /* PG */
	movl	%eax, %cr0
	ljmpl	$GDT_CODE64, $start64

	.balign 16
gdt:
	.quad	0
	.quad	0x00CF9B000000FFFF   /* 0x08 code32, DPL0 (accessed bit preset: the GDT is in ROM) */
	.quad	0x00CF93000000FFFF   /* 0x10 data, DPL0 */
	.quad	0x00AF9B000000FFFF   /* 0x18 code64, DPL0 */
	.quad	0x00CFF3000000FFFF   /* 0x20 data, DPL3 */
	.quad	0x00AFFB000000FFFF   /* 0x28 code64, DPL3 */
gdt_end:
gdt_desc:
	.word	gdt_end - gdt - 1
	.long	gdt

	/* 64-bit entry: in the payload, so it runs from RAM next to the C code */
	.section .text.start64, "ax"
	.code64
	.globl start64
start64:
	movw	$GDT_DATA, %ax
	movw	%ax, %ds
	movw	%ax, %es
	movw	%ax, %ss
	movq	$STACK0_TOP, %rsp
	call	guest_init
	pushq	$(GDT_UDATA | 3)        /* SS */
	pushq	$USTACK_TOP             /* RSP */
	pushq	$0x2                    /* RFLAGS: IF=0, IOPL=0 */
	pushq	$(GDT_UCODE | 3)        /* CS: CPL3 */
	pushq	$guest_main             /* RIP */
	iretq

	.section .reset, "ax"
	.code16
	.globl reset
reset:
	jmp	start16
	.balign 16, 0xf4
