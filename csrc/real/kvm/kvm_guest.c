/*
 * kvm_guest.c - the guest side of the /dev/kvm backend: the program that
 * performs kd_kvm_write's stores (hand-assembled x86-64, one comment per
 * instruction), its GDT and TSS, the register state that starts it in
 * 64-bit mode at CPL3, and the identity-mapping page tables.
 *
 * Why CPL3: on this kind of host (PVM, a shadow-paging nested hypervisor)
 * CPL0 guest code is emulated at ~1 us per instruction while CPL3 code runs
 * natively. `hlt` faults at CPL3, and so, measured here, does `out` even with
 * IOPL = 3 (KVM_EXIT_SHUTDOWN at the `out`): PVM runs the guest in hardware
 * ring 3 and does not emulate port I/O for guest user mode. So a run ends
 * with a one-byte store to the "exit page", a guest-physical page inside the
 * internal slot's reserved range that no memslot backs: KVM emulates it as
 * MMIO and returns KVM_EXIT_MMIO. The guest never takes an interrupt or an
 * exception on purpose: IDT limit 0, so any fault becomes a triple fault
 * (KVM_EXIT_SHUTDOWN), which the host reports as -EIO.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <string.h>

#if defined(__linux__) && defined(__x86_64__)
#include <linux/kvm.h>
#endif

#include "kvm_backend.h"

/*
 * The program. On entry RDI = guest address of this vCPU's command area
 * (struct kd_kg_cmd). Offsets on the left; KD_KG_RIP_* name the ones the
 * host recognises. Check with:
 *   objdump -D -b binary -m i386:x86-64 <file with these bytes>
 */
const uint8_t kd_kg_code[] = {
	/* 00 start: */
	0x48, 0x8b, 0x07,             /* 00 mov rax, [rdi]        ; value      */
	0x48, 0x8b, 0x4f, 0x08,       /* 03 mov rcx, [rdi+8]      ; n          */
	0x48, 0x8b, 0x57, 0x10,       /* 07 mov rdx, [rdi+16]     ; index      */
	/* 0b loop: */
	0x48, 0x39, 0xca,             /* 0b cmp rdx, rcx                       */
	0x73, 0x11,                   /* 0e jae done (0x21)                    */
	0x48, 0x8b, 0x74, 0xd7, 0x40, /* 10 mov rsi, [rdi+rdx*8+64] ; list[i]  */
	0x48, 0x89, 0x06,             /* 15 mov [rsi], rax  ; THE STORE (21)   */
	0x48, 0xff, 0xc2,             /* 18 inc rdx         ; (24)             */
	0x48, 0x89, 0x57, 0x10,       /* 1b mov [rdi+16], rdx ; publish (27)   */
	0xeb, 0xea,                   /* 1f jmp loop (0x0b)                    */
	/* 21 done: */
	0x48, 0x8b, 0x77, 0x18,       /* 21 mov rsi, [rdi+24]   ; exit_addr    */
	0x88, 0x06,                   /* 25 mov [rsi], al  ; MMIO: exit to host */
	0xeb, 0xd7,                   /* 27 jmp start (0x00) if re-entered     */
};
const size_t kd_kg_code_len = sizeof(kd_kg_code);

_Static_assert(KD_KG_RIP_STORE == 0x15 && KD_KG_RIP_INC == 0x18 && KD_KG_RIP_PUBLISH == 0x1b &&
		       KD_KG_RIP_EXIT == 0x25,
	       "RIP offsets must match the program");

/* GDT selectors (index << 3 | RPL). */
#define SEL_UCODE (3u << 3 | 3u)
#define SEL_UDATA (4u << 3 | 3u)
#define SEL_TSS (5u << 3)
#define GDT_ENTRIES 7u

void kd_kg_write_gdt(uint8_t *host, uint64_t base)
{
	uint64_t *gdt = (uint64_t *)(host + KD_KG_GDT_OFF);
	uint64_t tss = base + KD_KG_TSS_OFF;

	memset(gdt, 0, GDT_ENTRIES * 8);
	gdt[1] = 0x00af9b000000ffffull; /* kernel code64, DPL0 (unused) */
	gdt[2] = 0x00cf93000000ffffull; /* kernel data, DPL0 (unused) */
	gdt[3] = 0x00affb000000ffffull; /* user code64: P, DPL3, code r/x acc., L, G */
	gdt[4] = 0x00cff3000000ffffull; /* user data: P, DPL3, data r/w acc., D/B, G */
	/* 64-bit TSS, busy (type 0xb, as TR is loaded), limit 0x67, 16 bytes. */
	gdt[5] = 0x67ull | (tss & 0xffffffull) << 16 | 0x8bull << 40 | ((tss >> 24) & 0xffull) << 56;
	gdt[6] = tss >> 32;
	/* TSS: all zero (no stack switches ever happen); I/O map base past the
	 * limit, so no I/O bitmap (IOPL 3 makes `out` legal anyway). */
	memset(host + KD_KG_TSS_OFF, 0, 104);
	*(uint16_t *)(host + KD_KG_TSS_OFF + 102) = 104;
}

#if defined(__linux__) && defined(__x86_64__)
static void seg(struct kvm_segment *s, uint16_t sel, uint8_t type, uint8_t dpl, bool code)
{
	memset(s, 0, sizeof(*s));
	s->base = 0;
	s->limit = 0xffffffff;
	s->selector = sel;
	s->type = type;
	s->present = 1;
	s->dpl = dpl;
	s->s = 1;
	s->g = 1;
	s->l = code;  /* 64-bit code segment */
	s->db = !code; /* L and D/B may not both be set */
}

void kd_kg_sregs(struct kvm_sregs *s, uint64_t base)
{
	seg(&s->cs, SEL_UCODE, 0xb, 3, true);
	seg(&s->ss, SEL_UDATA, 0x3, 3, false);
	s->ds = s->es = s->fs = s->gs = s->ss;

	memset(&s->tr, 0, sizeof(s->tr));
	s->tr.base = base + KD_KG_TSS_OFF; /* identity mapped: below 2^47 */
	s->tr.limit = 0x67;
	s->tr.selector = SEL_TSS;
	s->tr.type = 0xb; /* busy 64-bit TSS: required by VM entry in long mode */
	s->tr.present = 1;

	memset(&s->ldt, 0, sizeof(s->ldt));
	s->ldt.type = 0x2;
	s->ldt.unusable = 1;

	s->gdt.base = base + KD_KG_GDT_OFF;
	s->gdt.limit = GDT_ENTRIES * 8 - 1;
	s->idt.base = 0;
	s->idt.limit = 0; /* any exception triple-faults: KVM_EXIT_SHUTDOWN */

	s->cr0 = 0x80050033ull; /* PG | AM | WP | NE | ET | MP | PE */
	s->cr3 = base + KD_KG_PT_OFF; /* PML4 is the pool's first page */
	s->cr4 = 0x20ull;       /* PAE */
	s->efer = 0x500ull;     /* LMA | LME */
}

void kd_kg_regs(struct kvm_regs *r, uint64_t base, uint64_t cmd_gpa)
{
	memset(r, 0, sizeof(*r));
	r->rip = base + KD_KG_CODE_OFF + KD_KG_RIP_START;
	r->rdi = cmd_gpa;
	r->rsp = cmd_gpa + KD_KG_CMD_BYTES; /* unused: no push/call */
	r->rflags = 0x3002ull; /* IOPL = 3, reserved bit 1; IF = 0 */
}
#endif

/* ---- page tables ---- */

#define PTE_P 0x1ull
#define PTE_RW 0x2ull
#define PTE_US 0x4ull
#define PTE_A 0x20ull
#define PTE_D 0x40ull
#define PTE_PS 0x80ull
#define PTE_TABLE (PTE_P | PTE_RW | PTE_US | PTE_A)
#define PTE_LEAF (PTE_P | PTE_RW | PTE_US | PTE_A | PTE_D | PTE_PS)
#define PTE_ADDR 0x000ffffffffff000ull

static uint64_t *pt_page(const struct kd_kg_pt *pt, uint64_t table_gpa)
{
	return (uint64_t *)(pt->host + (table_gpa - pt->base));
}

void kd_kg_pt_reset(struct kd_kg_pt *pt, uint8_t *host, uint64_t base, uint64_t limit,
		    bool gbpages)
{
	pt->host = host;
	pt->base = base;
	pt->limit = limit;
	pt->gbpages = gbpages;
	/* Only the PML4 needs zeroing: the other pages are zeroed as handed out. */
	memset(host + KD_KG_PT_OFF, 0, 4096);
	pt->used = 1;
}

bool kd_kg_pt_mapped(const struct kd_kg_pt *pt, uint64_t va)
{
	if (va >= KD_KG_VA_LIMIT)
		return false;
	uint64_t *pml4 = (uint64_t *)(pt->host + KD_KG_PT_OFF);
	uint64_t e = __atomic_load_n(&pml4[(va >> 39) & 511], __ATOMIC_ACQUIRE);
	if (!(e & PTE_P))
		return false;
	uint64_t *pdpt = pt_page(pt, e & PTE_ADDR);
	return __atomic_load_n(&pdpt[(va >> 30) & 511], __ATOMIC_ACQUIRE) & PTE_P;
}

/* A zeroed page from the pool; its gpa in *gpa. */
static int pt_alloc(struct kd_kg_pt *pt, uint64_t *gpa)
{
	if (pt->used >= KD_KG_PT_PAGES)
		return -ENOMEM;
	uint64_t off = KD_KG_PT_OFF + (uint64_t)pt->used * 4096u;
	memset(pt->host + off, 0, 4096);
	pt->used++;
	*gpa = pt->base + off;
	return 0;
}

int kd_kg_pt_map(struct kd_kg_pt *pt, uint64_t va, uint64_t gpa)
{
	if (gpa >= pt->limit || va >= KD_KG_VA_LIMIT)
		return -ERANGE;
	if (kd_kg_pt_mapped(pt, va))
		return 0;
	uint64_t *pml4 = (uint64_t *)(pt->host + KD_KG_PT_OFF);
	uint64_t *pml4e = &pml4[(va >> 39) & 511];
	uint64_t region = gpa & ~((1ull << 30) - 1);
	uint64_t pdpt_gpa = 0, pd_gpa = 0;
	/* Worst case two pages: check room first so nothing is half-built. */
	unsigned need = (*pml4e & PTE_P) ? 0u : 1u;
	if (!pt->gbpages)
		need++;
	if (pt->used + need > KD_KG_PT_PAGES)
		return -ENOMEM;

	if (*pml4e & PTE_P) {
		pdpt_gpa = *pml4e & PTE_ADDR;
	} else {
		pt_alloc(pt, &pdpt_gpa);
		/* Publish only after the page is zeroed (release). */
		__atomic_store_n(pml4e, pdpt_gpa | PTE_TABLE, __ATOMIC_RELEASE);
	}
	uint64_t *pdpte = &pt_page(pt, pdpt_gpa)[(va >> 30) & 511];
	if (pt->gbpages) {
		__atomic_store_n(pdpte, region | PTE_LEAF, __ATOMIC_RELEASE);
		return 0;
	}
	pt_alloc(pt, &pd_gpa);
	uint64_t *pd = pt_page(pt, pd_gpa);
	for (unsigned i = 0; i < 512; i++)
		pd[i] = (region + ((uint64_t)i << 21)) | PTE_LEAF;
	__atomic_store_n(pdpte, pd_gpa | PTE_TABLE, __ATOMIC_RELEASE);
	return 0;
}
