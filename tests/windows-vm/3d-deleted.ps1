# Step 3d: a key deleted while open (fidelity audit, 2026-12-05; kept in step with the
# emulator's `delete-held-key` scenario, kernel-emulator/src/harness/scenario/key_cache.rs).
# What only real Windows can show: that a deleted key's object still keeps its hive from
# unloading while NtQueryOpenSubKeysEx no longer lists it (read from the Windows Research
# Kernel: cmsubs.c CmpSearchForOpenSubKeys walks the KCB hash CmDeleteKey takes the key out
# of; cmapi.c CmUnloadKey still fails on its reference), and that the driver's
# RegNtPostDeleteKey marks it, so `hivetrack holders` reports it `deleted` and the key
# created again under its name as another key. Also the CLI's held-now filter on a real
# handle table: `NtQueryKey` names each duplicated key handle, and handles in other hives are
# not asked about (`held_now.handles_other_hives`), and identify requests of more than 64
# handles (protocol 4: 2,048) on a real handle table. And the mount a relative `reg load`
# is recorded at, and that its unload is matched (audit 16b, F5).
# A test hive is loaded under HKU, a helper keeps HivetrackKitDel\Gone open, this session
# deletes the key and creates it again, `reg unload` must fail, `holders --json` must show the
# helper's key deleted and this session's key not; then the helper exits and the unload
# succeeds. Not run here: written without a Windows machine, like the rest of the kit.
. "$PSScriptRoot\common.ps1"
Assert-Admin
$script:Failures = 0
Assert-Verified

Invoke-Native { sc.exe start hivetrack } | Out-Null   # demand start; already running is fine

# A hive file of our own, loaded after the driver started (so reports may say complete).
$loaded = New-TestHive 'HivetrackKitDel' 'Gone'
Write-Result 'test hive loaded' $loaded 'HKU\HivetrackKitDel'

# `reg load HKU\…` is RegLoadKey(HKEY_USERS, "HivetrackKitDel", file): NtLoadKey relative to
# the HKU handle. Which key object RegNtPreLoadKey's `Object` is (the root directory, or the
# new hive's root as Learn words it) is not settled (fidelity audit 16b, F5; the emulator's
# relative-load and relative-load-hive-root): either way the driver must list the hive at its
# full mount, loaded (not the name twice, not the bare name).
$hv = Invoke-Hivetrack @('hives', '--json')
$hv.Text | Set-Content (Join-Path $Results 'hives-after-load.json')
if ($hv.Code -ne 0) {
    Write-Result 'the driver lists the relative load at its full mount, loaded' $false $hv.Text
} else {
    $mounts = @(($hv.Text | ConvertFrom-Json).hives | Where-Object path -like '*HivetrackKitDel*')
    Write-Result 'the driver lists the relative load at its full mount, loaded' `
        ($mounts.Count -eq 1 -and $mounts[0].path -eq '\REGISTRY\USER\HivetrackKitDel' -and $mounts[0].state -eq 'loaded') `
        ($mounts | ConvertTo-Json -Compress)
}

# The helper keeps Gone open (read access only: the delete below uses a handle of its own).
$helper = Start-Process powershell.exe -PassThru -WindowStyle Hidden -ArgumentList @(
    '-NoProfile', '-Command',
    '$k = [Microsoft.Win32.Registry]::Users.OpenSubKey("HivetrackKitDel\Gone"); Start-Sleep -Seconds 600')
Start-Sleep -Seconds 3

# RegDeleteKey through this session's handle (DELETE access), then the name made again.
reg delete 'HKU\HivetrackKitDel\Gone' /f | Out-Null
Write-Result 'the held key is deleted' ($LASTEXITCODE -eq 0) "exit $LASTEXITCODE"
$again = [Microsoft.Win32.Registry]::Users.CreateSubKey('HivetrackKitDel\Gone')
Write-Result 'and created again under its name' ($null -ne $again) ''

$h = Invoke-Hivetrack @('holders', 'HKU\HivetrackKitDel', '--json')
$h.Text | Set-Content (Join-Path $Results 'holders-deleted.json')
$doc = $h.Text | ConvertFrom-Json
$helperKeys = @(@($doc.holders | Where-Object pid -eq $helper.Id).keys | Where-Object { $_.path -like '*\Gone' })
Write-Result "holders reports the helper's key as deleted" `
    ($helperKeys.Count -eq 1 -and $helperKeys[0].deleted) ($helperKeys | ConvertTo-Json -Compress)
$ownKeys = @(@($doc.holders | Where-Object pid -eq $PID).keys | Where-Object { $_.path -like '*\Gone' })
Write-Result "and this session's key, created again, as not deleted" `
    ($ownKeys.Count -ge 1 -and -not ($ownKeys | Where-Object deleted)) ($ownKeys | ConvertTo-Json -Compress)
# The kernel's list has this session's key but not the deleted one: reconciled, the deleted
# record not counted against it.
Write-Result 'the deleted key is not counted as a record the kernel does not list' `
    ($doc.source.coverage.unmatched_records -eq 0) ($doc.source.coverage | ConvertTo-Json -Compress)
# The held-now filter on the real handle table: handles into other hives were named and not
# asked about.
Write-Result 'held-now named other hives'' handles and did not ask about them' `
    ($null -eq $doc.held_now.error -and $doc.held_now.handles_other_hives -gt 0) ($doc.held_now | ConvertTo-Json -Compress)

# Identify requests of up to 2,048 handles (protocol 4): a second helper holds 2,100 handles
# into the test hive, so holders asks in two requests (at least 2,048 and the rest); every
# handle is examined and nothing fails (a request the driver cannot allocate for is asked
# again in halves; under low-resources simulation that may show in held_now).
$many = Start-Process powershell.exe -PassThru -WindowStyle Hidden -ArgumentList @(
    '-NoProfile', '-Command',
    '$ks = 1..2100 | ForEach-Object { [Microsoft.Win32.Registry]::Users.OpenSubKey("HivetrackKitDel") }; Start-Sleep -Seconds 600')
Start-Sleep -Seconds 10
$m = Invoke-Hivetrack @('holders', 'HKU\HivetrackKitDel', '--json')
$m.Text | Set-Content (Join-Path $Results 'holders-2100-handles.json')
$mdoc = $m.Text | ConvertFrom-Json
Write-Result 'held-now examined more than 2,048 handles of the hive without an error' `
    ($null -eq $mdoc.held_now.error -and $mdoc.held_now.handles_examined -ge 2100) ($mdoc.held_now | ConvertTo-Json -Compress)
Stop-Process -Id $many.Id -Force
Start-Sleep -Seconds 2

$again.Close()
Invoke-Native { reg unload 'HKU\HivetrackKitDel' } | Out-Null
Write-Result "reg unload fails: the deleted key's object still holds the hive" ($LASTEXITCODE -ne 0) "exit $LASTEXITCODE"

Stop-Process -Id $helper.Id -Force
Start-Sleep -Seconds 2
reg unload 'HKU\HivetrackKitDel' | Out-Null
Write-Result 'reg unload succeeds once the helper exits' ($LASTEXITCODE -eq 0) "exit $LASTEXITCODE"
# The unload matched the mount recorded at the load: the hive is no longer listed as loaded.
$after = Invoke-Hivetrack @('hives', '--json')
if ($after.Code -ne 0) {
    Write-Result 'and the driver no longer lists it as loaded' $false $after.Text
} else {
    $gone = @(($after.Text | ConvertFrom-Json).hives |
        Where-Object { $_.path -like '*HivetrackKitDel*' -and $_.state -eq 'loaded' })
    Write-Result 'and the driver no longer lists it as loaded' ($gone.Count -eq 0) ($gone | ConvertTo-Json -Compress)
}

Write-Host ''
Write-Host "Results in $Results ($script:Failures failure(s))."
exit $script:Failures
